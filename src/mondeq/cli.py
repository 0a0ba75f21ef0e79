"""The ``mondeq`` command: parses arguments, calls the library, prints.

Each command is one section here, its arguments beside its handler, and one entry of
:data:`COMMANDS`. Choices come from the library's registries (data sets, model kinds, solvers,
activations, benchmark sections) and the model flags from :class:`~mondeq.models.ModelConfig`'s
fields, so adding any of those needs no change here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``mondeq train: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, minimum: float, strict: bool = False, below: float = math.inf):
    """An argparse type: a finite ``kind`` value >= ``minimum`` (> when ``strict``) and < ``below``,
    else a one-line error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text} must be finite and {'>' if strict else '>='} {minimum:g}")
        if value >= below:
            raise argparse.ArgumentTypeError(f"{text} must be < {below:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


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

POSITIVE_INT = _number(int, 1)
COUNT = _number(int, 0)
POSITIVE = _number(float, 0, strict=True)
NON_NEGATIVE = _number(float, 0)
UNIT_INTERVAL = _number(float, 0, below=1.0)  # [0, 1)
SEED = _number(int, 0, below=2**64)  # what torch's generators take
#: argparse types of the kinds of value named in model option metadata.
VALUE_TYPES = {"positive_int": POSITIVE_INT, "count": COUNT, "positive": POSITIVE}


# -- options every command shares ------------------------------------------------------------
def _device_options(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=POSITIVE_INT, help="torch CPU threads")
    if data:
        p.add_argument("--data-dir", help="folder with the data set files (default: $MONDEQ_DATA or ~/.cache/mondeq/data)")


def _set_up(args: argparse.Namespace) -> str:
    """Apply ``--threads`` and check ``--device``; returns the device."""
    from .devices import resolve_device

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return str(resolve_device(args.device))


def _checkpoint_test_set(meta: dict, data_dir: str | None, limit: int | None = None):
    """The test split of the data set a checkpoint was trained on (``--data-dir`` overrides its folder)."""
    from .data import load_dataset

    train_cfg = meta["train"]
    return load_dataset(train_cfg["dataset"], "test", data_dir or train_cfg.get("data_dir")).subset(limit)


# -- train -----------------------------------------------------------------------------------
TRAIN_HELP = """Train a monDEQ classifier. Writes OUT/checkpoint.json with the tensors file it names,
OUT/metrics.csv (and OUT/tensorboard when tensorboard is installed). Ctrl-C or SIGTERM saves a
checkpoint and stops; --resume continues it."""


def train_arguments(p: argparse.ArgumentParser) -> None:
    from .data import DATASET_NAMES
    from .models import MODEL_KINDS, model_options
    from .train import RECIPES

    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="a tested set of options (explicit flags override it): "
        + "; ".join(f"{name}: {recipe.summary}" for name, recipe in RECIPES.items()),
    )
    p.add_argument("--dataset", choices=DATASET_NAMES, help="default fashion-mnist; folder: --data-dir DIR/{train,test}/CLASS/*")
    p.add_argument(
        "--model",
        type=model_name,
        metavar="{" + ",".join(MODEL_KINDS) + "} or MODULE:FUNCTION",
        help="a preset (default single-conv), or your own model: FUNCTION(in_channels=, image_size=, num_classes=) "
        "in MODULE returns an nn.Module with a MonDEQ layer (docs: Your own monotone layer)",
    )
    p.add_argument("--epochs", type=POSITIVE_INT, help="epochs (default 1; with --time-budget: until the budget is spent)")
    p.add_argument(
        "--time-budget",
        type=duration_minutes,
        metavar="DURATION",
        help="wall time for the whole run (90s, 45m, 1h): stops in time to evaluate and save",
    )
    p.add_argument("--batch-size", type=POSITIVE_INT, help="training batch size (default 128)")
    p.add_argument("--test-batch-size", type=POSITIVE_INT, help="evaluation batch size (default 128)")
    p.add_argument("--lr", type=POSITIVE, help="(peak) learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", choices=["step", "one-cycle", "constant"], help="default step")
    p.add_argument("--lr-step", type=POSITIVE_INT, help="epochs between 10x decays of the step schedule (default 10)")
    p.add_argument("--weight-decay", type=NON_NEGATIVE, help="decoupled (AdamW) weight decay of weights and kernels (default 0)")
    p.add_argument("--label-smoothing", type=UNIT_INTERVAL, help="label smoothing of the training loss, in [0, 1) (default 0)")
    p.add_argument(
        "--eval-every",
        type=COUNT,
        metavar="EPOCHS",
        help="evaluate every EPOCHS epochs (default 1; 0: only at the end, which is always evaluated)",
    )
    p.add_argument("--no-tune-alpha", dest="tune_alpha", action="store_false", default=None, help="keep alpha fixed")
    p.add_argument("--max-alpha", type=POSITIVE, help="largest alpha tried when tuning (default 1.0)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, help="random crop + flip (default: on for cifar10)")
    p.add_argument("--seed", type=SEED, help="random seed, below 2**64 (default 0)")
    p.add_argument("--out", help="run folder (default runs/DATASET-MODEL)")
    p.add_argument("--train-limit", type=POSITIVE_INT, help="use only the first N training images")
    p.add_argument("--test-limit", type=POSITIVE_INT, help="use only the first N test images")
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR", help="continue the run in --out (or RUN_DIR)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run that --out holds (without it, such a folder is refused)"
    )
    p.add_argument("--strict", action="store_true", default=None, help="stop a run whose solver is stuck at its iteration cap")
    p.add_argument(
        "--reuse",
        choices=["off", "forward", "both"],
        help="fixed-point reuse: start each example's solves where its last visit ended (default off)",
    )
    p.add_argument("--reuse-memory", type=POSITIVE, metavar="GB", help="memory cap of the fixed-point store (default 4)")
    p.add_argument(
        "--checkpoint-every",
        type=NON_NEGATIVE,
        metavar="MINUTES",
        help="also save a checkpoint inside an epoch this often (default 10; 0: only at epoch ends)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _device_options(p)
    group = p.add_argument_group("model and solver (default: the preset's)")
    for option in model_options():
        meta = option.metadata
        extra = {k: meta[k] for k in ("nargs", "metavar") if k in meta}
        if meta["value"] == "choice":
            extra["choices"] = sorted(meta["choices"])
        else:
            extra["type"] = VALUE_TYPES[meta["value"]]
        group.add_argument("--" + option.name.replace("_", "-"), help=meta["help"], **extra)


def train_command(args: argparse.Namespace) -> int:
    from . import distributed
    from .train import TrainingInterrupted

    device = distributed.init_from_environment(_set_up(args))
    try:
        code = _train(args, device)
    except TrainingInterrupted as stop:
        if distributed.is_main():
            print(f"\nmondeq train: {stop}: checkpoint saved; continue with --resume", file=sys.stderr)
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
        _leave_distributed_run(error)
    distributed.shutdown()
    return code


def _train(args: argparse.Namespace, device: str) -> int:
    from .distributed import is_main
    from .errors import ConfigError
    from .models import model_options
    from .train import RECIPES, TrainConfig, Trainer

    fields = TrainConfig.__dataclass_fields__
    options = {k: v for k, v in vars(args).items() if k in fields and v is not None and k != "device"}
    options["model_options"] = {o.name: getattr(args, o.name) for o in model_options() if getattr(args, o.name) is not None}
    if args.recipe:
        options = RECIPES[args.recipe].options(options)
    model = options.get("model", fields["model"].default).replace(":", "-")  # an entry point: module-function
    default_out = f"runs/{options.get('dataset', fields['dataset'].default)}-{model}"
    if args.resume:
        if args.overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it: give one of them")
        run = Path(args.resume) if isinstance(args.resume, str) else Path(options.get("out", default_out))
        trainer = Trainer.resume_run(run, {**options, "device": device}, progress=not args.no_progress)
    else:
        options.setdefault("out", default_out)
        on_existing = "overwrite" if args.overwrite else "refuse"
        trainer = Trainer(TrainConfig(**options, device=device), progress=not args.no_progress, on_existing=on_existing)
    history = trainer.fit()
    if is_main() and history:
        last = history[-1]
        print(f"test accuracy {last['test_accuracy']:.4f} after {last['epoch']} epoch(s); run saved in {trainer.config.out}")
    return 0


def _leave_distributed_run(error: Exception) -> None:
    """Name this rank's failure and leave at once, so torchrun stops the other ranks instead of
    letting them wait in a collective. A lost connection means another rank died first: say so,
    and leave a moment later, so that torchrun's summary names that rank as the root cause."""
    import time

    from . import distributed

    reason = distributed.lost_contact(error)
    if reason:
        print(
            f"mondeq train: rank {distributed.rank()} lost contact with another rank ({reason}); "
            "that rank stopped first: see torchrun's summary for its cause",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(distributed.LOST_CONTACT_GRACE)
    else:
        print(f"mondeq train: rank {distributed.rank()} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    os._exit(1)


# -- eval ------------------------------------------------------------------------------------
def eval_arguments(p: argparse.ArgumentParser) -> None:
    from .solvers import SOLVERS

    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="evaluation batch size (default 128)")
    p.add_argument("--limit", type=POSITIVE_INT, help="evaluate only the first N test images")
    p.add_argument("--solver", choices=sorted(SOLVERS), help="override the splitting method")
    p.add_argument("--tol", type=POSITIVE, help="override the tolerance")
    p.add_argument("--max-iter", type=POSITIVE_INT, help="override the iteration cap")
    _device_options(p)


def eval_command(args: argparse.Namespace) -> int:
    from .models import load_model, model_label
    from .train import evaluate

    device = _set_up(args)
    model, meta = load_model(args.checkpoint, device)
    overrides = {"method": args.solver, "tol": args.tol, "max_iter": args.max_iter}
    model.layer.configure(**{k: v for k, v in overrides.items() if v is not None})
    test = _checkpoint_test_set(meta, args.data_dir, args.limit)
    result = evaluate(model, test, args.batch_size, device)
    report = {
        "dataset": meta["train"]["dataset"],
        "model": model_label(meta["model"]),
        "examples": result.examples,
        "test_accuracy": round(result.accuracy, 4),
        "test_loss": round(result.loss, 4),
        "forward_iterations": round(result.forward_iterations, 2),
        "solver": model.layer.forward_options.method,
        "alpha": model.layer.alpha,
        "tol": model.layer.forward_options.tol,
        "seconds": round(result.seconds, 2),
    }
    print(json.dumps(report, indent=2))
    return 0


# -- predict ---------------------------------------------------------------------------------
def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("images", nargs="+", help="image files")
    _device_options(p, data=False)


def predict_command(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .data import DatasetInfo, dataset_info, read_image
    from .models import load_model

    device = _set_up(args)
    model, meta = load_model(args.checkpoint, device)
    info = DatasetInfo.from_dict(meta["data"]) if "data" in meta else dataset_info(meta["train"]["dataset"])
    images = torch.from_numpy(np.stack([read_image(path, info.channels, info.image_size) for path in args.images]))
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(info.normalize(images).to(device)), dim=1).cpu()
    for path, p in zip(args.images, probs):
        k = int(p.argmax())
        print(f"{path}: {info.classes[k]} (p={p[k]:.3f})")
    return 0


# -- plot ------------------------------------------------------------------------------------
def plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run folder")
    p.add_argument("--out", help="folder for the PNGs (default RUN_DIR/plots)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=128)
    p.add_argument("--tol", type=POSITIVE, default=1e-6)
    p.add_argument("--max-iter", type=POSITIVE_INT, default=300)
    _device_options(p)


def plot_command(args: argparse.Namespace) -> int:
    from .data import Batches
    from .files import output_dir
    from .models import equilibrium_input, load_model, model_label
    from .plot import convergence_traces, plot_certified, plot_convergence, plot_training_curves

    device = _set_up(args)
    run = Path(args.run_dir)
    model, meta = load_model(run, device)  # before anything is written: a missing run leaves nothing behind
    out = output_dir(Path(args.out) if args.out else run / "plots")
    written = []
    if (run / "metrics.csv").is_file():
        written.append(plot_training_curves(run / "metrics.csv", out / "training_curves.png"))
    if (run / "certify.json").is_file():
        written.append(plot_certified(run / "certify.json", out / "certified_accuracy.png"))
    test = _checkpoint_test_set(meta, args.data_dir)
    x, _ = next(iter(Batches(test, args.batch_size, device=device)))
    traces = convergence_traces(model.layer, equilibrium_input(model, x), tol=args.tol, max_iter=args.max_iter)
    title = f"{model_label(meta['model'])} on {meta['train']['dataset']}, batch of {len(x)}"
    written.append(plot_convergence(traces, out / "convergence.png", title))
    for path in written:
        print(path)
    return 0


# -- certify ---------------------------------------------------------------------------------
def certify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("--eps", type=POSITIVE, nargs="+", default=[0.1, 0.25, 0.5, 1.0], help="l2 radii (default 0.1 0.25 0.5 1)")
    p.add_argument("--limit", type=POSITIVE_INT, default=1000, help="test images to certify (default 1000)")
    p.add_argument("--pgd-steps", type=COUNT, default=20, help="steps of the PGD attack (0: no attack)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=250)
    p.add_argument("--tol", type=POSITIVE, default=1e-4, help="solver tolerance while certifying (default 1e-4)")
    p.add_argument("--out", help="JSON report (default: certify.json beside the checkpoint)")
    _device_options(p)


def certify_command(args: argparse.Namespace) -> int:
    from .checkpoint import checkpoint_paths
    from .errors import ConfigError
    from .files import check_output_file, write_atomic
    from .models import MonDEQClassifier, load_model
    from .robust import evaluate_robustness, lipschitz_bound

    device = _set_up(args)
    model, meta = load_model(args.checkpoint, device)
    out = check_output_file(args.out if args.out else checkpoint_paths(args.checkpoint)[1].with_name("certify.json"))
    if not isinstance(model, MonDEQClassifier):
        raise ConfigError(
            f"certify needs a preset model (fc, single-conv, multi-conv), not {meta['model'].get('entry_point')!r}: "
            "its bound ||R|| ||U|| / m holds for an equilibrium read out by one linear map"
        )
    model.layer.configure(tol=args.tol)  # margins of the true equilibrium
    bound = lipschitz_bound(model)
    test = _checkpoint_test_set(meta, args.data_dir, args.limit)
    robustness = evaluate_robustness(model, test, args.eps, bound.logits, args.pgd_steps, args.batch_size, device)
    report = {
        "m": bound.m,
        "input_norm": bound.input_norm,
        "readout_norm": bound.readout_norm,
        "lipschitz_equilibrium": bound.equilibrium,
        "lipschitz_logits": bound.logits,
        **robustness,
    }
    print(
        f"Lipschitz bound (l2): equilibrium {bound.equilibrium:.4g}, logits {bound.logits:.4g} "
        f"(||U|| = {bound.input_norm:.4g}, ||R|| = {bound.readout_norm:.4g}, m = {bound.m:g})"
    )
    print(f"clean accuracy {report['clean_accuracy']:.4f} on {report['examples']} test images")
    for k, e in enumerate(report["eps"]):
        line = f"eps {e:g}: certified accuracy {report['certified_accuracy'][k]:.4f}"
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
    p.add_argument("--tol", type=POSITIVE, default=1e-4)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32)
    p.add_argument("--seed", type=SEED, default=0)
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
    print(json.dumps(layer.stats.as_dict(), indent=2))
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
    "plot": Command("training curves and FB/PR/DR convergence plots of a run", plot_arguments, plot_command),
    "certify": Command("Lipschitz bound, certified and PGD accuracy at each epsilon (l2)", certify_arguments, certify_command),
    "bench": Command("run the benchmarks and write docs/benchmarks.md", bench_arguments, bench_command),
    "demo": Command("solve and differentiate one equilibrium on random data", demo_arguments, demo_command),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="mondeq",
        description="Monotone operator equilibrium networks: train, evaluate and inspect monDEQ classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = commands.add_parser(name, help=command.help, description=command.description)
        command.arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; an error in what was asked (options, files, data) is one line on stderr and exit code 2."""
    from .devices import tune_allocator
    from .errors import MondeqError, first_line

    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        return args.run(args)
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
