"""PNG plots of a run: training curves, and solver convergence on a batch."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import torch

from . import tolerances
from .errors import ConfigError, StepSizeWarning, ignore_convergence_warnings
from .files import write_atomic

__all__ = ["convergence_traces", "plot_certified", "plot_convergence", "plot_training_curves", "pyplot", "save_figure"]


def plot_certified(report_json: Path, out: Path) -> Path:
    """Certified (and PGD) accuracy against the radius (pixels in [0, 1]), from ``mondeq certify``'s
    report in either norm."""
    import json

    report = json.loads(Path(report_json).read_text())
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    eps = [0.0, *report["eps"]]
    ax.plot(eps, [100 * report["clean_accuracy"], *[100 * a for a in report["certified_accuracy"]]], "o-", label="certified")
    if report.get("pgd_accuracy"):
        ax.plot(eps, [100 * report["clean_accuracy"], *[100 * a for a in report["pgd_accuracy"]]], "s--", label="under PGD")
    norm = report.get("norm", "l2")
    bound = report.get("lipschitz_logits")
    title = f"Lipschitz bound {bound:.3g}" if bound is not None else "interval bounds through the equilibrium"
    ax.set(xlabel=f"{norm} radius eps (pixels in [0, 1])", ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out)
    return out


def save_figure(fig, out: Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG that replaces ``out`` atomically (never through a symlink), and close it."""
    write_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    pyplot().close(fig)
    return out


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(metrics_csv: Path, out: Path) -> Path:
    """Loss, accuracy and solver iterations per epoch from a run's ``metrics.csv``."""
    with open(metrics_csv) as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ConfigError(f"{metrics_csv} has no epochs yet")
    epoch = [float(r["epoch"]) for r in rows]  # a time-budgeted run ends with a fractional epoch
    column = lambda key: [float(r[key]) for r in rows]  # noqa: E731
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epoch, column("train_loss"), "o-", label="train")
    evaluated = [i for i, r in enumerate(rows) if r["test_accuracy"]]  # every epoch, unless --eval-every skipped some
    tested = lambda key: ([epoch[i] for i in evaluated], [float(rows[i][key]) for i in evaluated])  # noqa: E731
    axes[0].plot(*tested("test_loss"), "s-", label="test")
    axes[0].set(title="loss", xlabel="epoch")
    axes[1].plot(epoch, column("train_accuracy"), "o-", label="train")
    axes[1].plot(*tested("test_accuracy"), "s-", label="test")
    axes[1].set(title="accuracy", xlabel="epoch")
    axes[2].plot(epoch, column("forward_iterations"), "o-", label="forward")
    axes[2].plot(epoch, column("backward_iterations"), "s-", label="backward")
    axes[2].set(title="solver iterations per batch", xlabel="epoch")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out)
    return out


def plot_accuracy_vs_time(runs: dict[str, Path], out: Path) -> Path:
    """Test accuracy against elapsed wall time (minutes, evaluations included) of several runs,
    ``{label: metrics.csv}``: the evaluated epochs of each."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, metrics_csv in runs.items():
        with open(metrics_csv) as handle:
            rows = [r for r in csv.DictReader(handle) if r["test_accuracy"]]
        if not rows:
            raise ConfigError(f"{metrics_csv} has no evaluated epoch yet")
        minutes = [float(r["elapsed_seconds"]) / 60 for r in rows]
        ax.plot(
            minutes,
            [100 * float(r["test_accuracy"]) for r in rows],
            "o-",
            label=f"{label} ({100 * float(rows[-1]['test_accuracy']):.2f}%)",
        )
    ax.set(xlabel="wall time (minutes, evaluations included)", ylabel="test accuracy (%)", title="test accuracy against time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return out


@torch.no_grad()
def convergence_traces(
    layer, x: torch.Tensor, solvers=("fb", "pr", "dr"), tol: float = tolerances.CONVERGENCE_PLOT, max_iter: int = 300
):
    """``{solver: (residuals, times, alpha)}`` of the forward solve on ``x`` for each method.

    PR and DR use the layer's step size; forward-backward uses its safe step ``m / L^2`` (when
    the layer's is above its bound). The layer's own settings are left as they were.
    """
    traces = {}
    for name in solvers:
        with layer.options(solver=name, tol=tol, max_iter=max_iter), ignore_convergence_warnings(), warnings.catch_warnings():
            warnings.simplefilter("ignore", StepSizeWarning)
            layer(x)
        stats = layer.stats
        traces[name] = (stats.forward.residuals, stats.forward.times, stats.alpha)
    return traces


def plot_convergence(traces: dict, out: Path, title: str = "") -> Path:
    """Relative fixed-point residual against iteration and against wall time."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, (residuals, times, alpha) in traces.items():
        label = f"{name.upper()} (alpha={alpha:.3g})"
        axes[0].semilogy(range(1, len(residuals) + 1), residuals, label=label)
        axes[1].semilogy([1e3 * t for t in times], residuals, label=label)
    axes[0].set(xlabel="iteration", ylabel="relative residual", title=title or "forward solve")
    axes[1].set(xlabel="wall time (ms)", ylabel="relative residual")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, out)
    return out


def plot_run(
    run: str | Path,
    out: str | Path | None = None,
    batch_size: int = 128,
    tol: float = tolerances.CONVERGENCE_PLOT,
    max_iter: int = 300,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
    compare: list[str | Path] = (),
    weights: str = "average",
) -> tuple[list[Path], list[str]]:
    """The plots of a run folder, written to ``out`` (default ``RUN/plots``): training curves (from
    ``metrics.csv``), certified accuracy (from ``certify.json``), the FB / PR / DR convergence of
    the forward solve on a test batch, and with ``compare`` (other run folders) the test accuracy
    of every run against wall time; the convergence of the averaged weights when the run kept some
    (``weights="model"``: the trained ones). Returns the files written and notes (what is missing:
    a run stopped before its first epoch ended has no curves yet; which weights were solved)."""
    from .data import Batches
    from .files import output_dir
    from .models import equilibrium_input, load_model, model_label, test_set_of, weights_used
    from .train.run_state import run_position

    run = Path(run)
    model, meta = load_model(run, device, weights)  # before anything is written: a missing run leaves nothing behind
    others = {Path(other).name: Path(other) / "metrics.csv" for other in compare}
    missing = [str(path.parent) for path in others.values() if not path.is_file()]
    if missing:
        raise ConfigError(f"--compare: no metrics.csv in {', '.join(missing)} (not a run folder, or no epoch ended yet)")
    folder = output_dir(Path(out) if out else run / "plots")
    written, notes = [], [note for note in [weights_used(meta, weights)] if note]
    position = run_position(meta, f"checkpoint {run}")
    if position:
        notes.append(position)
    if (run / "metrics.csv").is_file():
        written.append(plot_training_curves(run / "metrics.csv", folder / "training_curves.png"))
    else:
        notes.append("no training curves: metrics.csv is written when the first epoch ends")
    if others and (run / "metrics.csv").is_file():
        runs = {run.name: run / "metrics.csv", **others}
        written.append(plot_accuracy_vs_time(runs, folder / "accuracy_vs_time.png"))
    if (run / "certify.json").is_file():
        written.append(plot_certified(run / "certify.json", folder / "certified_accuracy.png"))
    test = test_set_of(meta, data_dir)
    x, _ = next(iter(Batches(test, batch_size, device=device)))
    traces = convergence_traces(model.layer, equilibrium_input(model, x), tol=tol, max_iter=max_iter)
    title = f"{model_label(meta['model'])} on {meta['train']['dataset']}, batch of {len(x)}"
    written.append(plot_convergence(traces, folder / "convergence.png", title))
    return written, notes
