"""Fixed-point reuse and the gradients: solver iterations and time per training step.

The model of the ``fmnist-fast`` recipe is trained through :class:`~mondeq.train.Trainer` for
``EPOCHS`` epochs on the first ``IMAGES`` training images (the recipe's optimiser, one-cycle over
the epochs), once per (reuse, gradient) pair, from the same seed. Reported for the last epoch,
where every example's solves can start from its previous visit: mean forward and backward
iterations per step, seconds per step, and the test accuracy at the end on the first 2,000 test
images. An example comes back ``IMAGES / 128`` steps after its last visit here, against 469 steps
on the whole training set: the weights move less in between, so reuse saves more here than in a
full run (whose iterations per epoch are in ``metrics.csv``; docs/results.md).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..data import ImageDataset, load_dataset
from ..errors import DataError
from ..train import RECIPES, TrainConfig, Trainer
from . import Section, markdown_table
from .common import pyplot, save_figure, synthetic_images

#: (reuse, gradient) pairs, in the table's order.
CONFIGS = [
    ("off", "implicit"),
    ("forward", "implicit"),
    ("both", "implicit"),
    ("off", "phantom"),
    ("off", "jacobian-free"),
    ("forward", "jacobian-free"),
]
IMAGES, EPOCHS = 12_000, 3


def data(tiny: bool) -> tuple[ImageDataset, ImageDataset]:
    if not tiny:
        try:
            return load_dataset("fashion-mnist", "train").subset(IMAGES), load_dataset("fashion-mnist", "test").subset(2000)
        except DataError:
            pass
    synthetic = synthetic_images()
    return synthetic, synthetic


def run(tiny: bool = False) -> dict:
    train, test = data(tiny)
    settings = {k: v for k, v in RECIPES["fmnist-fast"].settings.items() if k not in ("out", "time_budget", "model_options")}
    sizes = dict(RECIPES["fmnist-fast"].settings["model_options"], **({"channels": [4]} if tiny else {}))
    rows = []
    for reuse, gradient in CONFIGS:
        with tempfile.TemporaryDirectory() as folder:
            options = {**settings, "epochs": EPOCHS, "eval_every": EPOCHS, "reuse": reuse, "out": f"{folder}/run"}
            config = TrainConfig(**options, model_options={**sizes, "gradient": gradient})
            trainer = Trainer(config, train, test, progress=False)
            start = time.perf_counter()
            history = trainer.fit()
            seconds = time.perf_counter() - start
        last, steps = history[-1], -(-len(train) // config.batch_size)
        rows.append(
            {
                "reuse": reuse,
                "gradient": gradient,
                "forward_iterations": last["forward_iterations"],
                "backward_iterations": last["backward_iterations"],
                "first_forward_iterations": history[0]["forward_iterations"],
                "forward_by_epoch": [h["forward_iterations"] for h in history],
                "backward_by_epoch": [h["backward_iterations"] for h in history],
                "step_seconds": last["epoch_seconds"] / steps,
                "test_accuracy": last["test_accuracy"],
                "seconds": seconds,
            }
        )
    return {"rows": rows, "images": len(train), "epochs": EPOCHS}


def markdown(result: dict) -> str:
    base = result["rows"][0]
    lines = [
        f"The `fmnist-fast` model trained {result['epochs']} epochs on {result['images']:,} images, per reuse and gradient; "
        f"iterations and time per step in the last epoch (every example seen before), accuracy on 2,000 test images.",
        "",
        *markdown_table(
            [
                "reuse",
                "gradient",
                "forward iterations, epoch 1 → last",
                "backward iterations",
                "s / step",
                "vs. row 1",
                "test accuracy",
            ],
            [
                [
                    r["reuse"],
                    r["gradient"],
                    f"{r['first_forward_iterations']:.1f} → {r['forward_iterations']:.1f}",
                    f"{r['backward_iterations']:.1f}",
                    f"{r['step_seconds']:.3f}",
                    f"{r['step_seconds'] / base['step_seconds']:.2f}x",
                    f"{100 * r['test_accuracy']:.2f}%",
                ]
                for r in result["rows"]
            ],
        ),
    ]
    return "\n".join(lines)


def plot(result: dict, folder: Path) -> list:
    """Forward (solid) and backward (dotted) iterations per step, epoch by epoch, per row."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, r in enumerate(result["rows"]):
        epochs = range(1, len(r["forward_by_epoch"]) + 1)
        label = f"reuse {r['reuse']}, {r['gradient']}"
        ax.plot(epochs, r["forward_by_epoch"], "o-", color=f"C{k}", label=label)
        if any(r["backward_by_epoch"]):
            ax.plot(epochs, r["backward_by_epoch"], "s:", color=f"C{k}", alpha=0.6)
    ax.set(xlabel="epoch", ylabel="iterations per step", title="forward (solid) and backward (dotted) solves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [save_figure(fig, folder / "reuse_iterations.png")]


SECTION = Section(title="11. Fixed-point reuse and gradients", order=12, run=run, markdown=markdown, plot=plot)
