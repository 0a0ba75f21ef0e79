"""The ``mondeq`` command: train, eval, predict, plot, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TRAIN_HELP = """Train a monDEQ classifier. Writes OUT/checkpoint.{safetensors,json}, OUT/metrics.csv
(and OUT/tensorboard when tensorboard is installed). Ctrl-C saves a checkpoint; --resume continues it."""


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and solver (default: the preset's)")
    g.add_argument("--width", type=int, help="hidden units of the fc model")
    g.add_argument("--channels", type=int, nargs="+", help="channels (one per tier for multi-conv)")
    g.add_argument("--m", type=float, help="monotonicity margin m > 0 (preset 1.0)")
    g.add_argument("--activation", help="relu, leaky_relu, tanh, sigmoid, softplus, hardtanh")
    g.add_argument("--solver", choices=["fb", "pr", "dr"], help="splitting method (preset pr)")
    g.add_argument("--alpha", type=float, help="splitting step size (preset 1.0, then tuned)")
    g.add_argument("--tol", type=float, help="relative residual tolerance (preset 1e-2)")
    g.add_argument("--max-iter", type=int, help="solver iteration cap (preset 300)")
    g.add_argument("--anderson", type=int, help="Anderson acceleration memory (0: off)")
    g.add_argument(
        "--input-norm",
        type=float,
        metavar="C",
        help="keep ||U|| <= C (spectral normalisation); with a large --m it lowers the bound ||R|| ||U|| / m",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--data-dir", help="folder with the data set files (default: $MONDEQ_DATA or ~/.cache/mondeq/data)")


def _checkpoint_test_set(meta: dict, data_dir: str | None, limit: int | None = None):
    """The test split of the data set a checkpoint was trained on (``--data-dir`` overrides its folder)."""
    from .data import load_dataset

    train_cfg = meta["train"]
    return load_dataset(train_cfg["dataset"], "test", data_dir or train_cfg.get("data_dir")).subset(limit)


def train_command(args: argparse.Namespace) -> int:
    from . import distributed

    device = distributed.init_from_environment(args.device)
    try:
        code = _train(args, device)
    except KeyboardInterrupt:
        if distributed.is_main():
            print("\ninterrupted: checkpoint saved; continue with --resume", file=sys.stderr)
        distributed.shutdown(synchronize=False)
        return 130
    except Exception as error:
        if distributed.world_size() <= 1:
            raise
        # Name the failing rank and leave at once: torchrun then stops the other ranks
        # instead of letting them wait in a collective.
        print(f"mondeq train: rank {distributed.rank()} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        os._exit(1)
    distributed.shutdown()
    return code


def _train(args: argparse.Namespace, device: str) -> int:
    from .checkpoint import load_checkpoint
    from .distributed import is_main
    from .train import TrainConfig, Trainer

    options = {
        k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None and k not in ("device",)
    }
    resume = args.resume
    if resume:
        out = Path(resume) if isinstance(resume, str) else Path(args.out or f"runs/{args.dataset}-{args.model}")
        meta, _, _ = load_checkpoint(out)
        stored = dict(meta["train"])
        stored.update({k: v for k, v in options.items() if k in ("epochs", "threads", "data_dir")})
        stored["out"] = str(out if out.is_dir() else out.parent)
        config = TrainConfig.from_dict({**stored, "device": device})
    else:
        options.setdefault("out", f"runs/{args.dataset}-{args.model}")
        config = TrainConfig(**{**options, "device": device})
    trainer = Trainer(config, progress=not args.no_progress)
    if resume:
        trainer.resume()
    history = trainer.fit()
    if is_main() and history:
        last = history[-1]
        print(f"test accuracy {last['test_accuracy']:.4f} after {last['epoch']} epoch(s); run saved in {config.out}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from .train import evaluate, load_model

    model, meta = load_model(args.checkpoint, args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for key in ("solver", "tol", "max_iter"):
        value = getattr(args, key)
        if value is not None:
            from .solvers import get_solver

            if key == "solver":
                model.layer.method = get_solver(value)
            else:
                setattr(model.layer, key, value)
    test = _checkpoint_test_set(meta, args.data_dir, args.limit)
    result = evaluate(model, test, args.batch_size, args.device)
    print(
        json.dumps(
            {
                "dataset": meta["train"]["dataset"],
                "model": meta["model"]["kind"],
                "examples": result.examples,
                "test_accuracy": round(result.accuracy, 4),
                "test_loss": round(result.loss, 4),
                "forward_iterations": round(result.forward_iterations, 2),
                "solver": model.layer.method.name,
                "alpha": model.layer.alpha,
                "tol": model.layer.tol,
                "seconds": round(result.seconds, 2),
            },
            indent=2,
        )
    )
    return 0


def predict_command(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from .data import DATASETS
    from .train import load_model

    model, meta = load_model(args.checkpoint, args.device)
    info = DATASETS[meta["train"]["dataset"]]
    arrays = []
    for path in args.images:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if info.channels == 1 else "RGB").resize((info.image_size, info.image_size))
                array = np.asarray(image, dtype=np.uint8)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
            raise SystemExit(f"cannot read image {path}: {error}") from error
        arrays.append(array[None] if info.channels == 1 else array.transpose(2, 0, 1))
    images = torch.from_numpy(np.stack(arrays))
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(info.normalize(images).to(args.device)), dim=1).cpu()
    for path, p in zip(args.images, probs):
        k = int(p.argmax())
        print(f"{path}: {info.classes[k]} (p={p[k]:.3f})")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from .data import Batches
    from .plot import convergence_traces, plot_certified, plot_convergence, plot_training_curves
    from .train import load_model

    run = Path(args.run_dir)
    out = Path(args.out) if args.out else run / "plots"
    written = []
    if (run / "metrics.csv").is_file():
        written.append(plot_training_curves(run / "metrics.csv", out / "training_curves.png"))
    if (run / "certify.json").is_file():
        written.append(plot_certified(run / "certify.json", out / "certified_accuracy.png"))
    model, meta = load_model(run, args.device)
    test = _checkpoint_test_set(meta, args.data_dir)
    x, _ = next(iter(Batches(test, args.batch_size, device=args.device)))
    traces = convergence_traces(model.layer, x, tol=args.tol, max_iter=args.max_iter)
    title = f"{meta['model']['kind']} on {meta['train']['dataset']}, batch of {len(x)}"
    written.append(plot_convergence(traces, out / "convergence.png", title))
    for path in written:
        print(path)
    return 0


def certify_command(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import checkpoint_paths
    from .data import Batches
    from .robust import certify, lipschitz_bound, pgd_attack
    from .train import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_model(args.checkpoint)
    model.eval()
    if args.tol is not None:
        model.layer.tol = model.layer.backward_tol = args.tol
    bound = lipschitz_bound(model)
    test = _checkpoint_test_set(meta, args.data_dir, args.limit)
    eps = sorted(args.eps)
    correct, certified, robust = 0, [0] * len(eps), [0] * len(eps)
    for x, y in Batches(test, args.batch_size):
        with torch.no_grad():
            right = model(x).argmax(1) == y
        radius = certify(model, x, y, bound.logits)
        correct += right.sum().item()
        for k, e in enumerate(eps):
            certified[k] += (right & (radius >= e)).sum().item()
            if args.pgd_steps:
                adversarial = pgd_attack(model, x, y, e, steps=args.pgd_steps)
                with torch.no_grad():
                    robust[k] += (model(adversarial).argmax(1) == y).sum().item()
    n = len(test)
    report = {
        "examples": n,
        "m": bound.m,
        "input_norm": bound.input_norm,
        "readout_norm": bound.readout_norm,
        "lipschitz_equilibrium": bound.equilibrium,
        "lipschitz_logits": bound.logits,
        "clean_accuracy": correct / n,
        "eps": eps,
        "certified_accuracy": [c / n for c in certified],
        "pgd_accuracy": [r / n for r in robust] if args.pgd_steps else None,
        "pgd_steps": args.pgd_steps,
    }
    print(
        f"Lipschitz bound (l2): equilibrium {bound.equilibrium:.4g}, logits {bound.logits:.4g} "
        f"(||U|| = {bound.input_norm:.4g}, ||R|| = {bound.readout_norm:.4g}, m = {bound.m:g})"
    )
    print(f"clean accuracy {report['clean_accuracy']:.4f} on {n} test images")
    for k, e in enumerate(eps):
        line = f"eps {e:g}: certified accuracy {report['certified_accuracy'][k]:.4f}"
        if args.pgd_steps:
            line += f", PGD ({args.pgd_steps} steps) accuracy {report['pgd_accuracy'][k]:.4f}"
        print(line)
    out = Path(args.out) if args.out else checkpoint_paths(args.checkpoint)[1].with_name("certify.json")
    out.write_text(json.dumps(report, indent=2))
    return 0


def bench_command(args: argparse.Namespace) -> int:
    from .benchmarks.report import run_all

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(run_all(args.only, tiny=args.tiny, out=Path(args.out), report_only=args.report_only))
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Solve and differentiate a convolutional monDEQ equilibrium on random data; print stats."""
    import torch

    from . import MonDEQ, SingleConv

    torch.manual_seed(args.seed)
    layer = MonDEQ(SingleConv(1, 16, 28, m=0.5), solver=args.solver, alpha=args.alpha, tol=args.tol)
    x = torch.randn(args.batch_size, 1, 28, 28, requires_grad=True)
    z = layer(x)
    z.pow(2).mean().backward()
    print(f"equilibrium shape {tuple(z.shape)}, |dL/dx| = {x.grad.norm():.4g}")
    print(json.dumps(layer.stats.as_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mondeq",
        description="Monotone operator equilibrium networks: train, evaluate and inspect monDEQ classifiers.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a classifier", description=TRAIN_HELP)
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist", "cifar10", "svhn"])
    p.add_argument("--model", default="single-conv", choices=["fc", "single-conv", "multi-conv"])
    p.add_argument("--epochs", type=int, help="epochs (default 1)")
    p.add_argument("--batch-size", type=int, help="training batch size (default 128)")
    p.add_argument("--test-batch-size", type=int, help="evaluation batch size (default 400)")
    p.add_argument("--lr", type=float, help="(peak) learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", choices=["step", "one-cycle", "constant"], help="default step")
    p.add_argument("--lr-step", type=int, help="epochs between 10x decays of the step schedule (default 10)")
    p.add_argument(
        "--no-tune-alpha",
        dest="tune_alpha",
        action="store_false",
        default=None,
        help="keep alpha fixed instead of the paper's tuning",
    )
    p.add_argument("--max-alpha", type=float, help="largest alpha tried when tuning (default 1.0)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random crop + flip (default: on for cifar10)",
    )
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--out", help="run folder (default runs/DATASET-MODEL)")
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, help="use only the first N test images")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in --out (or RUN_DIR) from its checkpoint",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)
    _model_options(p)
    p.set_defaults(func=train_command)

    p = commands.add_parser("eval", help="test accuracy and solver statistics of a checkpoint")
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("--batch-size", type=int, default=400)
    p.add_argument("--limit", type=int, help="evaluate only the first N test images")
    p.add_argument("--solver", choices=["fb", "pr", "dr"], help="override the splitting method")
    p.add_argument("--tol", type=float, help="override the tolerance")
    p.add_argument("--max-iter", type=int, help="override the iteration cap")
    _common(p)
    p.set_defaults(func=eval_command)

    p = commands.add_parser("predict", help="classify image files (PNG, JPEG, ...)")
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=predict_command)

    p = commands.add_parser("plot", help="training curves and FB/PR/DR convergence plots of a run")
    p.add_argument("run_dir", help="run folder")
    p.add_argument("--out", help="folder for the PNGs (default RUN_DIR/plots)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir")
    p.set_defaults(func=plot_command)

    p = commands.add_parser("certify", help="Lipschitz bound, certified and PGD accuracy at each epsilon (l2)")
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0], help="l2 radii (default 0.1 0.25 0.5 1)")
    p.add_argument("--limit", type=int, default=1000, help="test images to certify (default 1000)")
    p.add_argument("--pgd-steps", type=int, default=20, help="steps of the PGD attack (0: no attack)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="solver tolerance while certifying (default 1e-4: margins of the true equilibrium)",
    )
    p.add_argument("--out", help="JSON report (default: certify.json beside the checkpoint)")
    p.add_argument("--threads", type=int)
    p.add_argument("--data-dir")
    p.set_defaults(func=certify_command)

    p = commands.add_parser("bench", help="run the benchmarks and write docs/benchmarks.md")
    p.add_argument(
        "--only", nargs="+", metavar="NAME", help="solvers, resolvent, training_step, peers, memory, scaling (default: all)"
    )
    p.add_argument("--tiny", action="store_true", help="toy sizes, seconds per benchmark (writes benchmarks-tiny.md)")
    p.add_argument("--out", default="docs", help="folder for benchmarks.md and its plots (default docs)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--report-only", action="store_true", help="rewrite the page from stored results, run nothing")
    p.set_defaults(func=bench_command)

    p = commands.add_parser("demo", help="solve and differentiate one equilibrium on random data")
    p.add_argument("--solver", default="pr", choices=["fb", "pr", "dr"])
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=demo_command)
    return parser


def _tune_allocator() -> None:
    """Keep freed solver buffers (tens of MB each) in the heap instead of returning them to the
    OS after every iteration: glibc's default mmap threshold makes each one a fresh, page-faulting
    mapping, which costs about 13% of a single-conv training step on 2 cores."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError

    args = build_parser().parse_args(argv)
    _tune_allocator()
    try:
        return args.func(args)
    except (DataError, CheckpointError, ValueError) as error:
        print(f"mondeq {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
