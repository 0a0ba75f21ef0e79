"""The ``mondeq`` command: parses arguments, calls the library, prints.

Each command is one section here, its arguments beside its handler, and one entry of
:data:`COMMANDS`. Choices come from the library's registries (data sets, model kinds, solvers,
activations, benchmark sections), and the ``train`` flags from the fields of
:class:`~mondeq.train.TrainConfig` and :class:`~mondeq.models.ModelConfig`, so adding any of
those needs no change here. Only the chosen command's arguments are built, and torch is imported
only by the commands that use it: ``mondeq --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass
from pathlib import Path

from . import tolerances, validation


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``mondeq train: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _argument_type(number: validation.Number, name: str) -> Callable[[str], int | float]:
    """An argparse type from a :class:`~mondeq.validation.Number`: its one-line reason on a bad value."""

    def parse(text: str) -> int | float:
        try:
            return number.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


#: argparse types of the kinds of number that option metadata names.
NUMBER_TYPES = {kind: _argument_type(number, "int" if number.integer else "float") for kind, number in validation.NUMBERS.items()}
POSITIVE_INT, COUNT, POSITIVE = NUMBER_TYPES["positive_int"], NUMBER_TYPES["count"], NUMBER_TYPES["positive"]


def duration_minutes(text: str) -> float:
    """An argparse type: ``90s``, ``45m``, ``1.5h`` or a bare number of minutes, as minutes > 0."""
    units = {"s": 1 / 60, "m": 1.0, "h": 60.0}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1.0)
    try:
        value = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 45m or 1h") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite duration > 0")
    return value


duration_minutes.__name__ = "duration"


def model_name(text: str) -> str:
    """An argparse type: a preset (fc, single-conv, multi-conv) or a ``package.module:function`` entry point."""
    from .models import MODEL_KINDS, is_entry_point

    if text in MODEL_KINDS or is_entry_point(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither a preset ({', '.join(MODEL_KINDS)}) nor a 'package.module:function'")


model_name.__name__ = "model"

#: Parsers that option metadata names (``option(..., parser="duration")``).
PARSERS: dict[str, Callable[[str], object]] = {"duration": duration_minutes, "model": model_name}


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, options: Sequence[Field], defaults: bool) -> None:
    """One flag per option field (:func:`~mondeq.validation.option` metadata), ``--field-name``; every
    flag's value is ``None`` unless given. ``defaults`` appends each field's default to its help."""
    for option in options:
        meta, flag = option.metadata, "--" + option.name.replace("_", "-")
        default = option.default if option.default is not MISSING else None
        shown = defaults and default not in (None, "") and meta["value"] != "flag" and "default" not in meta["help"]
        help = (meta["help"] + (f" (default {default})" if shown else "")).replace("%", "%%")
        common = {"dest": option.name, "default": None, "help": help}
        if meta["value"] == "flag":
            if default is True:
                parser.add_argument("--no-" + flag[2:], action="store_false", **common)
            elif default is False:
                parser.add_argument(flag, action="store_true", **common)
            else:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
            continue
        extra = {k: meta[k] for k in ("nargs", "metavar") if k in meta}
        if meta["value"] == "choice":
            extra["choices"] = sorted(meta["choices"])
        elif "parser" in meta:
            extra["type"] = PARSERS[meta["parser"]]
        elif meta["value"] != "text":
            extra["type"] = NUMBER_TYPES[meta["value"]]
        parser.add_argument(flag, **common, **extra)


# -- options every command shares ------------------------------------------------------------
def _device_options(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=POSITIVE_INT, help="torch CPU threads")
    if data:
        p.add_argument("--data-dir", help="folder with the data set files (default: $MONDEQ_DATA or ~/.cache/mondeq/data)")


def _weights_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        choices=("average", "model"),
        default="average",
        help="average: the run's averaged weights when it was trained with weight averaging, else the trained ones; "
        "model: the trained ones (default average)",
    )


def _say_weights(command: str, meta: dict, weights: str) -> None:
    """Say on stderr when the averaged weights were taken."""
    from .models import weights_used

    note = weights_used(meta, weights)
    if note:
        print(f"mondeq {command}: {note}", file=sys.stderr)


def _dataset_info(meta: dict):
    """The :class:`~mondeq.data.DatasetInfo` of a checkpoint: its ``data`` entry, else its data set's."""
    from .data import DatasetInfo, dataset_info

    return DatasetInfo.from_dict(meta["data"]) if "data" in meta else dataset_info(meta["train"]["dataset"])


def _set_up(args: argparse.Namespace) -> str:
    """Apply ``--threads`` and check ``--device``; returns the device."""
    from .devices import resolve_device

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return str(resolve_device(args.device))


# -- train -----------------------------------------------------------------------------------
TRAIN_HELP = """Train a monDEQ classifier. Writes OUT/checkpoint.json with the tensors file it names,
OUT/metrics.csv (and OUT/tensorboard when tensorboard is installed). Ctrl-C or SIGTERM saves a
checkpoint and stops; --resume continues it."""


def train_arguments(p: argparse.ArgumentParser) -> None:
    from .models import model_options
    from .train import TrainConfig
    from .validation import options_of

    add_options(p, options_of(TrainConfig), defaults=True)
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR", help="continue the run in --out (or RUN_DIR)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run that --out holds (without it, such a folder is refused)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_options(p.add_argument_group("model and solver (default: the preset's)"), model_options(), defaults=False)


def train_command(args: argparse.Namespace) -> int:
    from . import distributed
    from .devices import resolve_device
    from .errors import TrainingInterrupted

    device = distributed.init_from_environment(str(resolve_device("cpu" if args.device is None else args.device)))
    try:
        code = _train(args, device)
    except TrainingInterrupted as stop:
        if distributed.is_main():
            print(f"\nmondeq train: {stop}: checkpoint saved; continue with `{_resume_command(args)}`", file=sys.stderr)
        distributed.shutdown(synchronize=False)
        return 128 + stop.signal
    except KeyboardInterrupt:
        if distributed.is_main():
            print("\nmondeq train: interrupted before saving; the last checkpoint on disk is intact", file=sys.stderr)
        distributed.shutdown(synchronize=False)
        return 130
    except Exception as error:
        if distributed.world_size() <= 1:
            raise
        distributed.leave_after_failure(error)
    distributed.shutdown()
    return code


def _resume_command(args: argparse.Namespace) -> str:
    """The command line that continues the run ``args`` trained."""
    return "mondeq train --resume " + shlex.quote(str(args.run_folder))


def _train(args: argparse.Namespace, device: str) -> int:
    from .distributed import is_main, world_size
    from .errors import ConfigError
    from .models import model_options
    from .train import RECIPES, TrainConfig, Trainer

    fields = TrainConfig.__dataclass_fields__
    options = {k: v for k, v in vars(args).items() if k in fields and v is not None and k != "device"}
    options["model_options"] = {o.name: getattr(args, o.name) for o in model_options() if getattr(args, o.name) is not None}
    if args.recipe:
        recipe = RECIPES[args.recipe]
        dropped = recipe.dropped(options)
        if dropped and is_main():
            print(
                f"mondeq train: --recipe {args.recipe} with --model {options['model']}: the recipe's "
                f"{', '.join('--' + name.replace('_', '-') for name in dropped)} dropped (they do not apply to it)",
                file=sys.stderr,
            )
        options = recipe.options(options)
    model = options.get("model", fields["model"].default).replace(":", "-")  # an entry point: module-function
    base = Path(options.get("out", f"runs/{options.get('dataset', fields['dataset'].default)}-{model}"))
    numbered = args.out is None and world_size() == 1  # a default folder: numbered, never refused
    if args.resume:
        if args.overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it: give one of them")
        args.run_folder = Path(args.resume) if isinstance(args.resume, str) else (latest_run(base) if numbered else base)
        trainer = Trainer.resume_run(args.run_folder, {**options, "device": device}, progress=not args.no_progress)
    else:
        args.run_folder = fresh_run_folder(base) if numbered and not args.overwrite else base
        if args.out is None:  # an explicit --out is the user's, checked as given
            options["out"] = str(args.run_folder)
        on_existing = "overwrite" if args.overwrite else "refuse"
        trainer = Trainer(TrainConfig(**options, device=device), progress=not args.no_progress, on_existing=on_existing)
        if args.run_folder != base and is_main():
            print(f"mondeq train: {base} holds a run; this run goes to {args.run_folder}", file=sys.stderr)
    trained_before = len(trainer.history)
    history = trainer.fit()
    if is_main() and history:
        last = history[-1]
        if args.resume and len(history) == trained_before:
            print(
                f"mondeq train: {args.run_folder} is finished ({last['epoch']} epoch(s), test accuracy "
                f"{last['test_accuracy']:.4f}); to train it on, give it more: "
                f"`mondeq train --resume {shlex.quote(str(args.run_folder))} --epochs N` (or --time-budget)"
            )
            return 0
        print(f"test accuracy {last['test_accuracy']:.4f} after {last['epoch']} epoch(s); run saved in {trainer.config.out}")
    return 0


def _numbered(base: Path, number: int) -> Path:
    return base if number == 1 else base.with_name(f"{base.name}-{number}")


def fresh_run_folder(base: Path) -> Path:
    """``base`` if it holds no run, else the first of ``base-2``, ``base-3``, ... that holds none (the
    convention of Lightning's ``version_N``): the default folder of ``mondeq train`` is never refused."""
    number = 1
    while (_numbered(base, number) / "checkpoint.json").exists():
        number += 1
    return _numbered(base, number)


def latest_run(base: Path) -> Path:
    """The last of ``base``, ``base-2``, ... that holds a run (``base`` when none does): what
    ``--resume`` without a folder continues."""
    number = 1
    while (_numbered(base, number + 1) / "checkpoint.json").exists():
        number += 1
    return _numbered(base, number)


# -- eval ------------------------------------------------------------------------------------
def eval_arguments(p: argparse.ArgumentParser) -> None:
    from .solvers import SOLVERS

    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="evaluation batch size (default 128)")
    p.add_argument("--limit", type=POSITIVE_INT, help="evaluate only the first N test images")
    p.add_argument("--solver", choices=sorted(SOLVERS), help="override the splitting method")
    p.add_argument("--tol", type=NUMBER_TYPES["tolerance"], help="override the tolerance")
    p.add_argument("--max-iter", type=POSITIVE_INT, help="override the iteration cap")
    _weights_option(p)
    _device_options(p)


def eval_command(args: argparse.Namespace) -> int:
    from .checkpoint import weights_taken
    from .models import load_model, model_label, test_set_of
    from .train import evaluate
    from .train.run_state import run_position

    device = _set_up(args)
    model, meta = load_model(args.checkpoint, device, args.weights)
    _say_weights("eval", meta, args.weights)
    overrides = {"solver": args.solver, "tol": args.tol, "max_iter": args.max_iter}
    model.layer.configure(**{k: v for k, v in overrides.items() if v is not None})
    position = run_position(meta, f"checkpoint {args.checkpoint}")
    if position:
        print(f"mondeq eval: note: {position}", file=sys.stderr)
    result = evaluate(model, test_set_of(meta, args.data_dir, args.limit), args.batch_size, device)
    report = {
        "dataset": meta["train"]["dataset"],
        "model": model_label(meta["model"]),
        "epoch": meta.get("epoch"),
        "batch": meta.get("batch"),
        "examples": result.examples,
        "test_accuracy": round(result.accuracy, 4),
        "test_loss": round(result.loss, 4),
        "weights": weights_taken(meta, args.weights),
        "forward_iterations": round(result.forward_iterations, 2),
        "solver": model.layer.forward_options.solver,
        "alpha": model.layer.alpha,
        "tol": model.layer.forward_options.tol,
        "seconds": round(result.seconds, 2),
    }
    print(json.dumps(report, indent=2))
    return 0


# -- predict ---------------------------------------------------------------------------------
def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder, checkpoint file, or a file of mondeq export (.onnx, .pt2)")
    p.add_argument(
        "images",
        nargs="+",
        help="image files (PNG, JPEG, ...), resized to the model's input; they should look like its data "
        "set's images: for Fashion-MNIST and MNIST a light object on a dark background",
    )
    _weights_option(p)
    _device_options(p, data=False)


def predict_command(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .data import DatasetInfo, read_image
    from .errors import CheckpointError

    device = _set_up(args)
    if Path(args.checkpoint).suffix in EXPORTED_SUFFIXES:
        from . import export

        exported = export.load(args.checkpoint)
        if "data" not in exported.metadata:
            raise CheckpointError(f"{args.checkpoint} was not written by mondeq export (no data entry)")
        info, model = DatasetInfo.from_dict(exported.metadata["data"]), exported
        device = "cpu"
    else:
        from .models import load_model

        model, meta = load_model(args.checkpoint, device, args.weights)
        _say_weights("predict", meta, args.weights)
        info = _dataset_info(meta)
        model.eval()
    images = torch.from_numpy(np.stack([read_image(path, info.channels, info.image_size) for path in args.images]))
    for path, image in zip(args.images, images):
        unlike = _unlike_training_images(image.float() / 255, info)
        if unlike:
            print(f"mondeq predict: warning: {path}: {unlike}; the prediction may mean little", file=sys.stderr)
    with torch.no_grad():
        output = model(info.normalize(images).to(device))
    logits, bounds = output if isinstance(output, tuple) else (output, None)
    probs = torch.softmax(logits, dim=1).cpu()
    for i, (path, p) in enumerate(zip(args.images, probs)):
        k = int(p.argmax())
        proven = "" if bounds is None else f", logits within {float(bounds[i]):.2g} of the equilibrium model's"
        print(f"{path}: {info.classes[k]} (p={p[k]:.3f}{proven})")
    return 0


def _unlike_training_images(image, info) -> str | None:
    """Why an image (values in [0, 1], ``(C, H, W)``) is far from the training images' statistics (its
    mean further from theirs than one pixel standard deviation, per channel), or ``None``."""
    for channel, (mean, std) in enumerate(zip(info.mean, info.std)):
        seen = float(image[channel].mean())
        if abs(seen - mean) > std:
            shade = "lighter" if seen > mean else "darker"
            return (
                f"its mean brightness {seen:.2f} is far {shade} than the training images' {mean:.2f} "
                f"(an inverted image? {info.name} images are a light object on a dark background)"
                if info.channels == 1
                else f"channel {channel} averages {seen:.2f}, the training images {mean:.2f} (std {std:.2f})"
            )
    return None


# -- export ----------------------------------------------------------------------------------
#: File suffixes of ``mondeq export``'s formats (``mondeq predict`` runs such files).
EXPORTED_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}
EXPORT_HELP = """Write a trained model as a fixed-depth network (K Peaceman-Rachford iterations) that runs
without mondeq: ONNX (onnxruntime; needs pip install 'mondeq[export]') or PT2 (torch.export.load).
K is the fewest iterations that prove --error for every image, or --iterations; the proven bound is
printed and stored in the file. Every preset model (fc, single-conv, multi-conv)."""
#: The logit error ``mondeq export`` proves unless told otherwise.
DEFAULT_EXPORT_ERROR = 0.01


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("--format", choices=tuple(EXPORTED_SUFFIXES.values()), default="onnx", help="file format (default onnx)")
    p.add_argument("--out", help="file to write (default: model.onnx or model.pt2 in the run folder)")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument(
        "--error",
        type=POSITIVE,
        help=f"the logits' distance (l2, hence every logit) from the equilibrium model's to prove for every image; "
        f"sets the iterations (default {DEFAULT_EXPORT_ERROR})",
    )
    bound.add_argument("--iterations", type=POSITIVE_INT, help="the iterations, given; the bound they prove is printed")
    p.add_argument(
        "--certify",
        action="store_true",
        help="the file also outputs each image's bound from its last iterate's residual (output 'bound'; "
        "far tighter than the bound for every image, at the cost of a few elementwise operations)",
    )
    _weights_option(p)
    p.add_argument("--threads", type=POSITIVE_INT, help="torch CPU threads")


def export_command(args: argparse.Namespace) -> int:
    import torch

    from . import export
    from .files import check_output_file
    from .models import load_model
    from .robust.certificates import image_range

    checkpoint = Path(args.checkpoint)
    suffix = {name: suffix for suffix, name in EXPORTED_SUFFIXES.items()}[args.format]
    out = Path(args.out) if args.out else (checkpoint if checkpoint.is_dir() else checkpoint.parent) / f"model{suffix}"
    check_output_file(out)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_model(checkpoint, "cpu", args.weights)
    _say_weights("export", meta, args.weights)
    info = _dataset_info(meta)
    low, high = image_range(info, torch.zeros(1, 1, 1, 1, dtype=torch.float64))
    error = None if args.iterations else (args.error or DEFAULT_EXPORT_ERROR)
    unrolled = export.unroll(model, iterations=args.iterations, error=error, input_range=(low, high), certify=args.certify)
    bound = unrolled.bound
    metadata = {
        "run": str(checkpoint),
        "iterations": bound.iterations,
        "logit_error": unrolled.error_bound,
        "bound": export.describe(bound),
        "certifies": args.certify,
        "data": info.to_dict(),
        "model": meta["model"],
    }
    shape = (info.channels, info.image_size, info.image_size)
    export.save(unrolled, out, args.format, shape, metadata)
    size = out.stat().st_size / 2**20
    print(
        f"mondeq export: wrote {out} ({args.format}, {size:.1f} MiB): {bound.iterations} Peaceman-Rachford iterations, "
        f"step {bound.alpha:.3g}, contraction {bound.rate:.4f} per iteration"
    )
    print(
        f"proven: for every image (pixel values in [0, 1]) its logits are within {unrolled.error_bound:.3g} (l2) of "
        f"the equilibrium model's; a prediction whose top-two margin exceeds {math.sqrt(2) * unrolled.error_bound:.3g} "
        "is the equilibrium model's"
    )
    if args.certify:
        print("each run of the file also returns its images' bounds (output 'bound'), computed from the last iterate")
    return 0


# -- plot ------------------------------------------------------------------------------------
def plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run folder")
    p.add_argument("--out", help="folder for the PNGs (default RUN_DIR/plots)")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN", help="other runs: test accuracy of all against wall time")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=128)
    p.add_argument(
        "--tol",
        type=NUMBER_TYPES["tolerance"],
        default=tolerances.CONVERGENCE_PLOT,
        help=f"tolerance of the convergence traces (default {tolerances.CONVERGENCE_PLOT:g}: deep enough to show the rates)",
    )
    p.add_argument("--max-iter", type=POSITIVE_INT, default=300)
    _weights_option(p)
    _device_options(p)


def plot_command(args: argparse.Namespace) -> int:
    from .plot import plot_run

    device = _set_up(args)
    written, notes = plot_run(
        args.run_dir,
        args.out,
        args.batch_size,
        args.tol,
        args.max_iter,
        args.data_dir,
        device,
        compare=args.compare,
        weights=args.weights,
    )
    for note in notes:
        print(f"mondeq plot: note: {note}", file=sys.stderr)
    for path in written:
        print(path)
    return 0


# -- certify ---------------------------------------------------------------------------------
#: What ``mondeq certify`` evaluates by default (about a minute on 2 cores), and with ``--full``.
QUICK_CERTIFY = {"limit": 200, "pgd_steps": 10}
FULL_CERTIFY = {"limit": None, "pgd_steps": 20}


def certify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument(
        "--norm", choices=("l2", "linf"), default="l2", help="l2 (a Lipschitz bound) or linf (interval bounds; default l2)"
    )
    p.add_argument(
        "--eps", type=POSITIVE, nargs="+", help="radii, pixels in [0, 1] (default: 0.1 0.3 0.5 for l2, 0.05 0.1 for linf)"
    )
    p.add_argument(
        "--limit", type=POSITIVE_INT, help=f"test images to certify (default {QUICK_CERTIFY['limit']}: about a minute on 2 cores)"
    )
    p.add_argument(
        "--pgd-steps", type=COUNT, help=f"steps of the PGD attack (0: no attack; default {QUICK_CERTIFY['pgd_steps']})"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help=f"the full evaluation: the whole test set, {FULL_CERTIFY['pgd_steps']} PGD steps (--limit, --pgd-steps still apply)",
    )
    p.add_argument("--batch-size", type=POSITIVE_INT, default=250)
    p.add_argument(
        "--tol",
        type=NUMBER_TYPES["tolerance"],
        default=tolerances.EVALUATION,
        help=f"solver tolerance while certifying (default {tolerances.EVALUATION:g}; an l2 certificate allows for the rest)",
    )
    p.add_argument("--out", help="JSON report (default: certify.json beside the checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _weights_option(p)
    _device_options(p)


#: The radii ``mondeq certify`` reports by default, per norm (pixels in [0, 1]).
DEFAULT_EPS = {"l2": [0.1, 0.3, 0.5], "linf": [0.05, 0.1]}


def certify_command(args: argparse.Namespace) -> int:
    from .checkpoint import checkpoint_paths
    from .files import check_output_file, write_atomic
    from .robust import certify_checkpoint

    device = _set_up(args)
    out = check_output_file(args.out if args.out else checkpoint_paths(args.checkpoint)[1].with_name("certify.json"))
    eps = args.eps or DEFAULT_EPS[args.norm]
    defaults = FULL_CERTIFY if args.full else QUICK_CERTIFY
    report = certify_checkpoint(
        args.checkpoint,
        eps,
        args.norm,
        args.limit if args.limit is not None else defaults["limit"],
        args.pgd_steps if args.pgd_steps is not None else defaults["pgd_steps"],
        args.batch_size,
        args.tol,
        args.data_dir,
        device,
        progress=not args.no_progress,
        weights=args.weights,
    )
    if report["weights"] != "model":
        print(f"mondeq certify: the {report['weights']} weights; --weights model for the trained ones", file=sys.stderr)
    if args.norm == "l2":
        bound, source = report["lipschitz_logits"], report["lipschitz_source"]
        line = f"Lipschitz bound (l2) of the logits, model input units: {bound:.4g}, {source}"
        if "input_norm" in report:
            line += f" (||U|| = {report['input_norm']:.4g}, ||R|| = {report['readout_norm']:.4g}, m = {report['m']:g})"
        print(line)
    else:
        print("interval bounds through the equilibrium (l-infinity ball clipped to the image range)")
    print(f"clean accuracy {report['clean_accuracy']:.4f} on {report['examples']} test images")
    for k, e in enumerate(report["eps"]):
        line = f"{args.norm} eps {e:g}: certified accuracy {report['certified_accuracy'][k]:.4f}"
        if args.pgd_steps:
            line += f", PGD ({args.pgd_steps} steps) accuracy {report['pgd_accuracy'][k]:.4f}"
        print(line)
    write_atomic(out, json.dumps(report, indent=2))
    return 0


# -- bench -----------------------------------------------------------------------------------
def bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", nargs="+", metavar="NAME", help="sections to run (default: all; unknown names are listed)")
    p.add_argument("--tiny", action="store_true", help="toy sizes, seconds per benchmark (writes benchmarks-tiny.md)")
    p.add_argument("--out", default="docs", help="folder for benchmarks.md and its plots (default docs)")
    p.add_argument("--report-only", action="store_true", help="rewrite the page from stored results, run nothing")
    _device_options(p, data=False)


def bench_command(args: argparse.Namespace) -> int:
    from .benchmarks.report import run_all

    _set_up(args)
    print(run_all(args.only, tiny=args.tiny, out=Path(args.out), report_only=args.report_only))
    return 0


# -- demo ------------------------------------------------------------------------------------
def demo_arguments(p: argparse.ArgumentParser) -> None:
    from .solvers import SOLVERS

    p.add_argument("--solver", default="pr", choices=sorted(SOLVERS))
    p.add_argument("--alpha", type=POSITIVE, default=1.0)
    p.add_argument(
        "--tol", type=NUMBER_TYPES["tolerance"], default=tolerances.LAYER, help=f"solver tolerance (default {tolerances.LAYER:g})"
    )
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32)
    p.add_argument("--seed", type=NUMBER_TYPES["seed"], default=0)
    _device_options(p, data=False)


def demo_command(args: argparse.Namespace) -> int:
    """Solve and differentiate a convolutional monDEQ equilibrium on random data; print stats."""
    import torch

    from . import MonDEQ, SingleConv
    from .errors import ConfigError, first_line

    device = _set_up(args)
    torch.manual_seed(args.seed)
    try:
        layer = MonDEQ(SingleConv(1, 16, 28, m=0.5), solver=args.solver, alpha=args.alpha, tol=args.tol).to(device)
        layer.linear.check_step_size(args.alpha)
    except ValueError as error:
        raise ConfigError(first_line(error)) from error
    x = torch.randn(args.batch_size, 1, 28, 28, device=device, requires_grad=True)
    z = layer(x)
    z.pow(2).mean().backward()
    print(f"equilibrium shape {tuple(z.shape)}, |dL/dx| = {x.grad.norm():.4g}")
    stats = {k: round(v, 6) if isinstance(v, float) else v for k, v in layer.stats.as_dict().items()}
    print(json.dumps(stats, indent=2))
    return 0


# -- the registry and the entry point ---------------------------------------------------------
@dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


COMMANDS: dict[str, Command] = {
    "train": Command("train a classifier", train_arguments, train_command, TRAIN_HELP),
    "eval": Command("test accuracy and solver statistics of a checkpoint", eval_arguments, eval_command),
    "predict": Command("classify image files (PNG, JPEG, ...)", predict_arguments, predict_command),
    "export": Command("a model as an ONNX or PT2 file with a proven error bound", export_arguments, export_command, EXPORT_HELP),
    "plot": Command("training curves and FB/PR/DR convergence plots of a run", plot_arguments, plot_command),
    "certify": Command("Lipschitz bound, certified and PGD accuracy at each epsilon (l2)", certify_arguments, certify_command),
    "bench": Command("run the benchmarks and write docs/benchmarks.md", bench_arguments, bench_command),
    "demo": Command("solve and differentiate one equilibrium on random data", demo_arguments, demo_command),
}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mondeq")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``mondeq`` parser. Given ``argv``, only the command it names gets its arguments (building
    them imports the library); without, every command does."""
    parser = _Parser(
        prog="mondeq",
        description="Monotone operator equilibrium networks: train, evaluate and inspect monDEQ classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else next((a for a in argv if a in COMMANDS), "")
    for name, command in COMMANDS.items():
        p = commands.add_parser(name, help=command.help, description=command.description)
        if chosen is None or name == chosen:
            command.arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; an error in what was asked (options, files, data) is one line on stderr and exit code 2."""
    from .errors import MondeqError, first_line

    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)
        from .devices import tune_allocator

        tune_allocator()
    except KeyboardInterrupt:  # before the command's own handler is in place (e.g. while torch imports)
        print("\nmondeq: interrupted", file=sys.stderr)
        return 130
    try:
        return args.run(args)
    except KeyboardInterrupt:  # a command without a handler of its own, or one still importing
        print(f"\nmondeq {args.command}: interrupted", file=sys.stderr)
        return 130
    except MondeqError as error:
        if args.debug:
            raise
        print(f"mondeq {args.command}: error: {first_line(error)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        if args.debug or not _out_of_memory(error):
            raise
        print(
            f"mondeq {args.command}: error: out of memory ({first_line(error)[:120]}); try a smaller --batch-size",
            file=sys.stderr,
        )
        return 2


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed (CPU or GPU), not a bug."""
    text = str(error)
    return (
        isinstance(error, MemoryError)
        or "OutOfMemoryError" in type(error).__name__
        or any(marker in text for marker in ("not enough memory", "out of memory", "Tried to allocate", "can't allocate memory"))
    )


if __name__ == "__main__":
    sys.exit(main())
