"""Robustness on Fashion-MNIST: Lipschitz bounds, certified and PGD accuracy of monDEQs (trained
normally, with a large m, with a constrained U) against an explicit MLP of the same width.

Trains the runs that are missing (``mondeq train``, into ``runs/``), then evaluates each with
:func:`mondeq.robust.evaluate_robustness` at the radii :data:`EPS`; the MLP is trained here. Its
results go to a page of their own, ``docs/robustness.md``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batches, load_dataset, write_synthetic_mnist
from ..errors import ignore_convergence_warnings
from ..models import load_model
from ..robust import evaluate_robustness, lipschitz_bound, spectral_norm
from . import Section
from .common import pyplot, save_figure

EPS = [0.1, 0.25, 0.5, 1.0]
#: name: (run folder, ``mondeq train`` options)
RUNS = {
    "fc, m = 1": ("runs/fashion-mnist-fc", ["--model", "fc"]),
    "fc, m = 20": ("runs/fashion-mnist-fc-m20", ["--model", "fc", "--m", "20", "--epochs", "5", "--lr", "3e-3"]),
    "fc, m = 20, ‖U‖ ≤ 10": (
        "runs/fashion-mnist-fc-m20-u10",
        ["--model", "fc", "--m", "20", "--input-norm", "10", "--epochs", "5", "--lr", "3e-3"],
    ),
    "single-conv, m = 1": ("runs/fashion-mnist-single-conv", ["--model", "single-conv"]),
    "single-conv, m = 20": (
        "runs/fashion-mnist-single-conv-m20",
        ["--model", "single-conv", "--m", "20", "--train-limit", "20000"],
    ),
}
TINY_RUNS = {"fc, m = 1 (tiny)": ["--model", "fc", "--width", "16", "--train-limit", "64", "--test-limit", "16"]}
MLP = "3-layer MLP (784-87-87-10)"


def _train(folder: Path, options: list[str], data_dir: str | None) -> None:
    command = [sys.executable, "-m", "mondeq", "train", *options, "--out", str(folder), "--no-progress"]
    subprocess.run([*command, *(["--data-dir", data_dir] if data_dir else [])], check=True, capture_output=True)


def mondeq_row(folder: Path, limit: int, pgd_steps: int, data_dir: str | None) -> dict:
    model, meta = load_model(folder)
    model.layer.configure(tol=1e-4)  # margins of the true equilibrium
    bound = lipschitz_bound(model)
    test = load_dataset("fashion-mnist", "test", data_dir).subset(limit)
    with ignore_convergence_warnings():
        row = evaluate_robustness(model, test, EPS, bound.logits, pgd_steps)
    return {**row, "lipschitz_logits": bound.logits, "input_norm": bound.input_norm, "note": f"{meta['epoch']} epoch(s)"}


def mlp_row(limit: int, pgd_steps: int, epochs: int, data_dir: str | None) -> dict:
    """A 784-87-87-10 ReLU MLP; its l2 Lipschitz bound is the product of its layers' spectral norms."""
    torch.manual_seed(0)
    train, test = load_dataset("fashion-mnist", "train", data_dir), load_dataset("fashion-mnist", "test", data_dir).subset(limit)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 87), nn.ReLU(), nn.Linear(87, 87), nn.ReLU(), nn.Linear(87, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(epochs):
        for x, y in Batches(train, 128, shuffle=True, epoch=epoch):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    bound = 1.0
    for layer in model:
        if isinstance(layer, nn.Linear):
            weight = layer.weight.detach().double()
            bound *= spectral_norm(lambda v, w=weight: v @ w.T, (1, layer.in_features))
    row = evaluate_robustness(model, test, EPS, bound, pgd_steps)
    return {**row, "lipschitz_logits": bound, "note": f"{epochs} epochs, {seconds:.0f} s"}


def run(tiny: bool = False, limit: int = 500, pgd_steps: int = 10) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = str(write_synthetic_mnist(Path(scratch) / "data", 64, 32)) if tiny else None
        runs = {name: (Path(scratch) / "run", options) for name, options in TINY_RUNS.items()} if tiny else RUNS
        limit, pgd_steps = (16, 2) if tiny else (limit, pgd_steps)
        for name, (folder, options) in runs.items():
            if not (Path(folder) / "checkpoint.json").is_file():
                _train(Path(folder), options, data_dir)
            rows[name] = mondeq_row(Path(folder), limit, pgd_steps, data_dir)
            rows[name]["note"] += f", `mondeq train {' '.join(options)}`"
        rows[MLP] = mlp_row(limit, pgd_steps, 1 if tiny else 5, data_dir)
    return {"rows": rows, "eps": EPS, "limit": limit, "pgd_steps": pgd_steps}


def markdown(result: dict) -> str:
    eps = result["eps"]
    lines = [
        "| model | training | Lipschitz bound (logits, l2) | clean | "
        + " | ".join(f"certified / PGD at eps={e:g}" for e in eps)
        + " |",
        "|---|---|---|---|" + "---|" * len(eps),
    ]
    for name, r in result["rows"].items():
        cells = [f"{100 * c:.1f}% / {100 * p:.1f}%" for c, p in zip(r["certified_accuracy"], r["pgd_accuracy"])]
        head = f"| {name} | {r['note']} | {r['lipschitz_logits']:.3g} | {100 * r['clean_accuracy']:.1f}% | "
        lines.append(head + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, folder: Path) -> list:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    eps = [0.0, *result["eps"]]
    for k, (name, r) in enumerate(result["rows"].items()):
        color = f"C{k}"
        ax.plot(eps, [100 * r["clean_accuracy"], *[100 * a for a in r["certified_accuracy"]]], "o-", color=color, label=name)
        ax.plot(eps, [100 * r["clean_accuracy"], *[100 * a for a in r["pgd_accuracy"]]], "s:", color=color, alpha=0.6)
    ax.set(xlabel="l2 radius eps", ylabel="accuracy (%)", title="certified (solid) and under PGD (dotted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [save_figure(fig, folder / "robustness.png")]


SECTION = Section(
    title="Robustness on Fashion-MNIST: Lipschitz bounds, certified and empirical accuracy",
    order=8,
    run=run,
    markdown=markdown,
    plot=plot,
    page="robustness.md",
    introduction=(
        "`mondeq bench --only robustness` trains the missing models into `runs/`, then evaluates the first "
        "500 Fashion-MNIST test images at l2 radii eps on the normalised inputs (1/0.353 of pixel units). "
        "*Certified* = correctly classified with logit margin > 2·L·eps (no perturbation of norm eps can "
        "change the prediction); *PGD* = accuracy under a 10-step l2 PGD attack at the same eps. The bound L "
        "of the logits is ‖R‖‖U‖/m for the monDEQs (spectral norms by power iteration on the models' own "
        "maps, +1% slack per norm) and the product of the layer norms for the MLP. The same evaluation is "
        "`mondeq certify RUN` for one run."
    ),
)
