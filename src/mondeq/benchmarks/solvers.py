"""Solver comparison: FB, PR, DR, each with and without Anderson acceleration.

For each operator family at the paper's size, at initialisation and after one epoch of
Fashion-MNIST training: forward and backward iterations and wall time until the relative
residual first reaches 1e-2, 1e-4 and 1e-6, and the residual curves.
"""

from __future__ import annotations

import math
import warnings

import torch.nn.functional as F

from ..errors import StepSizeWarning, ignore_convergence_warnings
from . import Section, markdown_table
from .common import KINDS, Scale, batch, model_at, pyplot, save_figure

LEVELS = (1e-2, 1e-4, 1e-6)
METHODS = [("fb", 0), ("fb", 5), ("pr", 0), ("pr", 5), ("dr", 0), ("dr", 5)]


def first_reaching(residuals: list[float], times: list[float], level: float) -> tuple[int | None, float | None]:
    for k, (r, t) in enumerate(zip(residuals, times)):
        if r <= level:
            return k + 1, t
    return None, None


def run(tiny: bool = False, max_iter: int | None = None) -> dict:
    scale = Scale.get(tiny)
    max_iter = max_iter or (60 if tiny else 400)
    x, y = batch(scale)
    rows, curves = [], {}
    for kind in KINDS:
        for state in ("init", "trained"):
            model = model_at(scale, kind, trained=state == "trained")
            if model is None:
                continue
            layer = model.layer
            for method, anderson in METHODS:
                model.zero_grad()
                options = layer.options(solver=method, anderson=anderson, tol=min(LEVELS), max_iter=max_iter)
                with options, ignore_convergence_warnings(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", StepSizeWarning)  # FB runs at its safe step m / L^2
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                stats = layer.stats
                row = {"family": kind, "state": state, "method": method.upper(), "anderson": anderson, "alpha": stats.alpha}
                for direction, record in (("forward", stats.forward), ("backward", stats.backward)):
                    for level in LEVELS:
                        iters, seconds = first_reaching(record.residuals, record.times, level)
                        row[f"{direction}_iters_{level:g}"] = iters
                        row[f"{direction}_seconds_{level:g}"] = seconds
                rows.append(row)
                label = f"{method.upper()}{'+AA' if anderson else ''}"
                curves.setdefault(f"{kind} ({state})", {})[label] = (stats.forward.residuals, stats.forward.times)
    return {"rows": rows, "curves": curves, "max_iter": max_iter, "batch": scale.batch}


def plot(result: dict, folder) -> list:
    plt = pyplot()
    paths = []
    for name, traces in result["curves"].items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        for label, (residuals, times) in traces.items():
            style = "--" if "+AA" in label else "-"
            axes[0].semilogy(range(1, len(residuals) + 1), residuals, style, label=label)
            axes[1].semilogy([1e3 * t for t in times], residuals, style, label=label)
        axes[0].set(xlabel="iteration", ylabel="relative residual", title=f"forward solve, {name}")
        axes[1].set(xlabel="wall time (ms)", ylabel="relative residual")
        for ax in axes:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        paths.append(save_figure(fig, folder / f"solvers_{name.replace(' ', '_').replace('(', '').replace(')', '')}.png"))
    return paths


def markdown(result: dict) -> str:
    def cell(it, sec):
        return "–" if it is None else f"{it} / {1e3 * sec:.0f} ms"

    lines = [
        f"Batch of {result['batch']} Fashion-MNIST test images; iterations / wall time until the relative residual first "
        f"reaches each level (– : not within {result['max_iter']} iterations). Backward: the implicit backward solve for "
        "the cross-entropy loss. PR/DR use the model's tuned alpha; FB uses its safe step m/L².",
        "",
        *markdown_table(
            ["family", "state", "method", "AA", *(f"{d} 1e{round(math.log10(lv))}" for d in ("fwd", "bwd") for lv in LEVELS)],
            [
                [
                    r["family"],
                    r["state"],
                    r["method"],
                    "yes" if r["anderson"] else "no",
                    *(cell(r[f"{d}_iters_{lv:g}"], r[f"{d}_seconds_{lv:g}"]) for d in ("forward", "backward") for lv in LEVELS),
                ]
                for r in result["rows"]
            ],
        ),
    ]
    return "\n".join(lines)


SECTION = Section(
    title="1. Solver comparison: FB, PR, DR, with and without Anderson acceleration",
    order=1,
    run=run,
    markdown=markdown,
    plot=plot,
)
