"""Time to accuracy: test accuracy against wall-clock training time on Fashion-MNIST.

The monDEQ of the ``fmnist-fast`` recipe and explicit baselines of comparable size (a CNN, an
MLP, a Neural ODE when torchdiffeq is installed) are each trained with the recipe's settings
(its optimiser, weight decay and label smoothing, one-cycle over the budget, no augmentation,
batch 128; the monDEQ also with its fixed-point reuse and gradient) for the same wall-clock
budget, and evaluated at evenly spaced times (evaluation time is not counted) on the first
``PROBE_IMAGES`` test images, one test set per curve; the final accuracy of the table is on the
full test set (the Neural ODE's adaptive solver makes full evaluations at every mark cost more
than its budget).
The budget per model is ``MONDEQ_RACE_MINUTES`` (default 60; the tiny smoke run: 1 s on
synthetic images). With ``MONDEQ_RECIPE_RUN`` naming the run folder of a full
``mondeq train --recipe fmnist-fast`` run, its per-epoch test accuracies against elapsed time
(evaluations counted there) are drawn on the same axes.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset, load_dataset
from ..errors import DataError
from ..models import MonDEQClassifier, preset_config
from ..train import RECIPES, TrainConfig
from . import Section, markdown_table
from .common import pyplot, save_figure, synthetic_images, train_for
from .peers import NeuralODE, accuracy, explicit_cnn

RECIPE = "fmnist-fast"
#: Test images of the intermediate evaluations (the last one uses the whole test set).
PROBE_IMAGES = 2000


def mlp(hidden: int = 120) -> nn.Module:
    """784-hidden-10 ReLU network (95k parameters at 120 hidden units)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def contenders(tiny: bool) -> dict[str, nn.Module]:
    settings = RECIPES[RECIPE].settings
    options = dict(settings["model_options"], **({"channels": [4]} if tiny else {}))
    models: dict[str, nn.Module] = {
        f"monDEQ ({RECIPE} recipe)": MonDEQClassifier(preset_config("single-conv", "fashion-mnist", 1, 28, 10, **options)),
        "explicit CNN": explicit_cnn(),
        "MLP": mlp(),
    }
    try:
        import torchdiffeq  # noqa: F401

        models["Neural ODE (dopri5)"] = NeuralODE(8 if tiny else 48)
    except ImportError:
        pass
    return models


def data(tiny: bool) -> tuple[ImageDataset, ImageDataset]:
    if not tiny:
        try:
            return load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
        except DataError:
            pass
    synthetic = synthetic_images()
    return synthetic, synthetic


def recipe_run_curve(folder: str | None) -> list | None:
    """``(elapsed seconds, test accuracy)`` per evaluated row of a run's metrics.csv, if ``folder`` is given."""
    if not folder:
        return None
    with open(Path(folder) / "metrics.csv") as handle:
        return [(float(r["elapsed_seconds"]), float(r["test_accuracy"])) for r in csv.DictReader(handle) if r["test_accuracy"]]


def run(tiny: bool = False) -> dict:
    minutes = 1 / 60 if tiny else float(os.environ.get("MONDEQ_RACE_MINUTES", 60))
    settings = {k: v for k, v in RECIPES[RECIPE].settings.items() if k not in ("out", "model_options")}
    config = TrainConfig(**{**settings, "time_budget": minutes})
    train, test = data(tiny)
    probe_images = test.subset(PROBE_IMAGES)
    curves = {}
    for name, model in contenders(tiny).items():
        torch.manual_seed(0)
        timed = train_for(
            model,
            config,
            train,
            lambda logits, x, y, t: F.cross_entropy(logits, y, label_smoothing=config.label_smoothing),
            marks=2 if tiny else 6,
            probe=lambda model: accuracy(model, probe_images),
        )
        curves[name] = {
            "points": timed.points,
            "final": accuracy(model, test),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
    return {
        "minutes": minutes,
        "curves": curves,
        "test_examples": len(test),
        "recipe_run": recipe_run_curve(None if tiny else os.environ.get("MONDEQ_RECIPE_RUN")),
    }


def plot(result: dict, folder) -> list:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in result["curves"].items():
        minutes = [t / 60 for t, _ in curve["points"]]
        ax.plot(minutes, [100 * a for _, a in curve["points"]], "o-", label=f"{name}, {curve['parameters'] / 1e3:.0f}k params")
    if result.get("recipe_run"):
        run = result["recipe_run"]
        ax.plot(
            [t / 60 for t, _ in run], [100 * a for _, a in run], "s--", label=f"monDEQ, full {RECIPE} run (evaluations counted)"
        )
    ax.axhline(92, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="wall-clock time (min)", ylabel="test accuracy (%)", title="Fashion-MNIST, 2 CPU cores, equal time")
    ax.set_ylim(bottom=max(0, min(ax.get_ylim()[0], 80)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return [save_figure(fig, folder / "time_accuracy.png")]


def markdown(result: dict) -> str:
    lines = [
        f"Each model trained for {result['minutes']:.3g} minutes of wall-clock training time with the `{RECIPE}` "
        f"recipe's optimiser settings; test accuracy at the end on all {result['test_examples']:,} test images "
        f"(the curves: on the first {min(PROBE_IMAGES, result['test_examples']):,} at every mark).",
        "",
    ]
    rows = []
    for name, curve in result["curves"].items():
        points = curve["points"]
        seconds, half = points[len(points) // 2 - 1] if len(points) > 1 else points[0]
        final = curve.get("final", points[-1][1])
        rows.append([name, f"{curve['parameters']:,}", f"{100 * half:.2f}% ({seconds / 60:.1f} min)", f"**{100 * final:.2f}%**"])
    lines += markdown_table(["model", "parameters", "at half the time (probe)", "test accuracy at the end"], rows)
    if result.get("recipe_run"):
        seconds, final = result["recipe_run"][-1]
        lines += ["", f"Full `{RECIPE}` run: {100 * final:.2f}% after {seconds / 60:.1f} minutes, evaluations included."]
    return "\n".join(lines)


SECTION = Section(title="8. Time to accuracy", order=9, run=run, markdown=markdown, plot=plot)
