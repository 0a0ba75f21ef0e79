"""Time per training step against batch size and against channels / width, with fitted exponents.

The solver runs a fixed number of iterations (forward and backward), so the curves show the
cost of the operations, not changes in convergence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ignore_convergence_warnings
from ..models import MonDEQClassifier, preset_config
from . import Section, markdown_table
from .common import measure, pyplot, save_figure

ITERATIONS = 5


def step_seconds(kind: str, size: int, batch_size: int, repeat: int) -> float:
    torch.manual_seed(0)
    option = {"width": size} if kind == "fc" else {"channels": [size]}
    model = MonDEQClassifier(preset_config(kind, "fashion-mnist", 1, 28, 10, tol=1e-300, max_iter=ITERATIONS, **option))
    x = torch.randn(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))

    def step():
        model.zero_grad()
        with ignore_convergence_warnings():
            F.cross_entropy(model(x), y).backward()

    return measure(step, repeat)


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def run(tiny: bool = False) -> dict:
    repeat = 1 if tiny else 3
    batches = (4, 8) if tiny else (16, 32, 64, 128, 256)
    channels = (2, 4) if tiny else (16, 32, 64, 128)
    widths = (16, 32) if tiny else (64, 128, 256, 512, 1024)
    series = {
        "single-conv vs batch (54 channels)": [(b, step_seconds("single-conv", 4 if tiny else 54, b, repeat)) for b in batches],
        "single-conv vs channels (batch 64)": [(c, step_seconds("single-conv", c, 8 if tiny else 64, repeat)) for c in channels],
        "fc vs width (batch 128)": [(w, step_seconds("fc", w, 8 if tiny else 128, repeat)) for w in widths],
    }
    return {
        "iterations": ITERATIONS,
        "series": {name: {"points": pts, "exponent": slope(*zip(*pts))} for name, pts in series.items()},
    }


def plot(result: dict, folder) -> list:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(result["series"]), figsize=(14, 3.6))
    for ax, (name, data) in zip(axes, result["series"].items()):
        xs, ys = zip(*data["points"])
        ax.loglog(xs, [1e3 * y for y in ys], "o-")
        ax.set(title=f"{name}\nexponent {data['exponent']:.2f}", ylabel="ms per step")
        ax.grid(alpha=0.3, which="both")
    return [save_figure(fig, folder / "scaling.png")]


def markdown(result: dict) -> str:
    lines = [
        f"Training step with {result['iterations']} forward and {result['iterations']} backward PR iterations; "
        "exponent = slope of log(time) against log(size).",
        "",
        *markdown_table(
            ["series", "points (size: ms per step)", "fitted exponent"],
            [
                [name, ", ".join(f"{s}: {1e3 * t:.0f}" for s, t in data["points"]), f"**{data['exponent']:.2f}**"]
                for name, data in result["series"].items()
            ],
        ),
    ]
    return "\n".join(lines)


SECTION = Section(title="6. Scaling", order=6, run=run, markdown=markdown, plot=plot)
