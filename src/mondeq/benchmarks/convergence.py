"""Where the equal-time gap comes from: the race's monDEQ and explicit CNN trained for the same epochs.

The monDEQ of the ``fmnist-fast`` recipe and the explicit CNN of the time-to-accuracy race are each
trained for ``MONDEQ_CONVERGENCE_EPOCHS`` epochs (default 40) with the recipe's settings without its
time budget (its optimiser, weight decay, label smoothing, one-cycle over the epochs, batch 128; the
monDEQ with its fixed-point reuse), by the step of ``mondeq train``. Test accuracy on the first
``PROBE_IMAGES`` test images at every tenth of the run, on all of them at the end; train accuracy on
the first ``TRAIN_PROBE`` training images at the end (the generalisation gap); training seconds per
epoch (probes not counted). Equal epochs separate the three possible causes of the equal-time gap:
cost per epoch (seconds per epoch), capacity (train accuracy) and generalisation (train minus test).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..models import MonDEQClassifier, preset_config
from ..train import RECIPES, TrainConfig
from . import Section, markdown_table
from .common import pyplot, save_figure, train_for
from .peers import accuracy, explicit_cnn
from .time_to_accuracy import PROBE_IMAGES, RECIPE, data

#: Training images whose accuracy is measured at the end.
TRAIN_PROBE = 10_000


def run(tiny: bool = False) -> dict:
    epochs = 2 if tiny else int(os.environ.get("MONDEQ_CONVERGENCE_EPOCHS", 40))
    settings = {k: v for k, v in RECIPES[RECIPE].settings.items() if k not in ("out", "model_options", "time_budget")}
    config = TrainConfig(**{**settings, "epochs": epochs, "time_budget": None})
    train, test = data(tiny)
    probe_images = test.subset(PROBE_IMAGES)
    options = dict(RECIPES[RECIPE].settings["model_options"], **({"channels": [4]} if tiny else {}))
    models = {
        f"monDEQ ({RECIPE} recipe)": lambda: MonDEQClassifier(
            preset_config("single-conv", "fashion-mnist", 1, 28, 10, **options)
        ),
        "explicit CNN": explicit_cnn,
    }
    rows = {}
    for name, build in models.items():
        torch.manual_seed(0)
        model = build()
        timed = train_for(
            model,
            config,
            train,
            lambda logits, x, y, t: F.cross_entropy(logits, y, label_smoothing=config.label_smoothing),
            marks=min(epochs, 10),
            probe=lambda model: accuracy(model, probe_images),
        )
        rows[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "epochs": timed.epochs,
            "seconds": timed.seconds,
            "points": [(epochs * (k + 1) / len(timed.points), seconds, value) for k, (seconds, value) in enumerate(timed.points)],
            "test_accuracy": accuracy(model, test),
            "train_accuracy": accuracy(model, train.subset(TRAIN_PROBE)),
        }
    return {"epochs": epochs, "models": rows, "test_examples": len(test), "probe_images": len(probe_images)}


def plot(result: dict, folder) -> list:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, row in result["models"].items():
        epochs, seconds, values = zip(*row["points"])
        axes[0].plot(epochs, [100 * v for v in values], "o-", label=name)
        axes[1].plot([s / 60 for s in seconds], [100 * v for v in values], "o-", label=name)
    axes[0].set(xlabel="epoch", ylabel="test accuracy (%, probe)", title="at equal epochs")
    axes[1].set(xlabel="training time (min)", title="against the time each took")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return [save_figure(fig, folder / "convergence.png")]


def markdown(result: dict) -> str:
    epochs = result["epochs"]
    lines = [
        f"The `{RECIPE}` recipe's monDEQ and the race's explicit CNN, each trained for {epochs} epochs with the recipe's "
        f"settings and no time budget (one-cycle over the {epochs} epochs); test accuracy on all "
        f"{result['test_examples']:,} test images, train accuracy on the first {TRAIN_PROBE:,} training images "
        f"(the curves: on the first {result['probe_images']:,} test images at every tenth of the run).",
        "",
        *markdown_table(
            ["model", "parameters", "training time", "per epoch", "train accuracy", "test accuracy", "train - test"],
            [
                [
                    name,
                    f"{row['parameters']:,}",
                    f"{row['seconds'] / 60:.1f} min",
                    f"{row['seconds'] / row['epochs']:.1f} s",
                    f"{100 * row['train_accuracy']:.2f}%",
                    f"**{100 * row['test_accuracy']:.2f}%**",
                    f"{100 * (row['train_accuracy'] - row['test_accuracy']):.2f}",
                ]
                for name, row in result["models"].items()
            ],
        ),
    ]
    return "\n".join(lines)


SECTION = Section(
    title="13. Convergence: the monDEQ and the CNN at equal epochs", order=14, run=run, markdown=markdown, plot=plot
)
