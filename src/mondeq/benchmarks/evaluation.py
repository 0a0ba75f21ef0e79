"""Evaluation throughput: test images per second by batch size, and accuracy by solver tolerance.

Evaluation runs the forward solve only (no autograd tape, no backward solve). Its cost per image
depends on the batch size through memory traffic: the hidden state of a 400-image batch of the
single-conv preset (54 x 28 x 28 floats per image, complex spectra beside it) no longer fits the
caches. The tolerance table uses the trained model of ``runs/fmnist-hour`` (the recipe's run)
when present.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import ImageDataset, load_dataset
from ..errors import CheckpointError, DataError, ignore_convergence_warnings
from ..models import MonDEQClassifier, load_model, preset_config
from ..train import RECIPES, TrainConfig, evaluate
from . import Section, markdown_table
from .common import Scale, model_at, synthetic_images

BATCH_SIZES = (400, 128, 32)
TOLERANCES = (1e-2, 1e-3, 1e-4)
RECIPE_RUN = Path("runs/fmnist-hour")


def test_images(tiny: bool) -> ImageDataset:
    if not tiny:
        try:
            return load_dataset("fashion-mnist", "test")
        except DataError:
            pass
    return synthetic_images(8 if tiny else 28)


def recipe_model(tiny: bool, trained: bool) -> MonDEQClassifier | None:
    if tiny:
        return None
    if trained:
        try:
            return load_model(RECIPE_RUN)[0]
        except CheckpointError:
            return None
    options = RECIPES["fmnist-hour"].settings["model_options"]
    torch.manual_seed(0)
    return MonDEQClassifier(preset_config("single-conv", "fashion-mnist", 1, 28, 10, **options))


def run(tiny: bool = False) -> dict:
    scale = Scale.get(tiny)
    test = test_images(tiny)
    timed = test.subset(16 if tiny else 2000)
    models = {
        "single-conv": model_at(scale, "single-conv"),
        "multi-conv": model_at(scale, "multi-conv"),
        "fmnist-hour recipe": recipe_model(tiny, trained=False),
    }
    rows = []
    for name, model in models.items():
        if model is None:
            continue
        with ignore_convergence_warnings():
            evaluate(model, timed.subset(min(len(timed), 32)), 32)  # warm-up: caches, allocator
            for batch_size in BATCH_SIZES:
                result = evaluate(model, timed, batch_size)
                rows.append({"model": name, "batch": batch_size, "images_per_second": len(timed) / result.seconds})
    tolerance_rows = []
    trained = recipe_model(tiny, trained=True)
    if trained is not None:
        with ignore_convergence_warnings():
            for tol in TOLERANCES:
                with trained.layer.options(tol=tol, max_iter=500):
                    result = evaluate(trained, test, TrainConfig.test_batch_size)
                tolerance_rows.append(
                    {
                        "tol": tol,
                        "accuracy": result.accuracy,
                        "iterations": result.forward_iterations,
                        "seconds": result.seconds,
                    }
                )
    return {"rows": rows, "timed_images": len(timed), "tolerance": tolerance_rows, "test_images": len(test)}


def markdown(result: dict) -> str:
    lines = [
        f"Forward solves only (`mondeq eval`, the trainer's test pass) over {result['timed_images']:,} test images, "
        "preset sizes at initialisation (tol 1e-2).",
        "",
    ]
    table = []
    for name in dict.fromkeys(r["model"] for r in result["rows"]):
        rows = {r["batch"]: r["images_per_second"] for r in result["rows"] if r["model"] == name}
        base = rows[BATCH_SIZES[0]]
        table.append([name, *(f"{rows[b]:.0f} img/s ({rows[b] / base:.2f}x)" for b in BATCH_SIZES)])
    lines += markdown_table(["model", *(f"batch {b}" for b in BATCH_SIZES)], table)
    if result["tolerance"]:
        lines += [
            "",
            f"Accuracy of the trained `fmnist-hour` model on all {result['test_images']:,} test images by evaluation "
            f"tolerance (batch {TrainConfig.test_batch_size}):",
            "",
            *markdown_table(
                ["tol", "test accuracy", "mean forward iterations", "time"],
                [
                    [f"{r['tol']:g}", f"{100 * r['accuracy']:.2f}%", f"{r['iterations']:.1f}", f"{r['seconds']:.1f} s"]
                    for r in result["tolerance"]
                ],
            ),
        ]
    return "\n".join(lines)


SECTION = Section(title="9. Evaluation throughput and tolerance", order=10, run=run, markdown=markdown)
