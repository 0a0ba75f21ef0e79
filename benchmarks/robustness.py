"""Robustness on Fashion-MNIST: monDEQs trained normally and with a large m, against an explicit MLP.

Trains what is missing (fc and single-conv with m = 1 and with a large m; a 3-layer MLP), runs
`mondeq certify` on each and writes docs/robustness.md. Usage:

    python benchmarks/robustness.py [--limit 500] [--pgd-steps 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mondeq.data import Batches, load_dataset
from mondeq.robust import logit_margin, pgd_attack, spectral_norm

EPS = [0.1, 0.25, 0.5, 1.0]
RUNS = {
    # name: (run folder, train options)
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


def mondeq(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "mondeq", *args], check=True, capture_output=True, text=True).stdout


def mlp_row(limit: int, steps: int, epochs: int = 5) -> dict:
    """A 784-87-87-10 ReLU MLP; its l2 Lipschitz bound is the product of its layers' spectral norms."""
    torch.manual_seed(0)
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test").subset(limit)
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
    model.eval()
    correct, certified, robust = 0, [0] * len(EPS), [0] * len(EPS)
    for x, y in Batches(test, 250):
        with torch.no_grad():
            logits = model(x)
        right = logits.argmax(1) == y
        radius = torch.clamp(logit_margin(logits, y), min=0) / (2 * bound)
        correct += right.sum().item()
        for k, e in enumerate(EPS):
            certified[k] += (right & (radius >= e)).sum().item()
            adversarial = pgd_attack(model, x, y, e, steps=steps)
            with torch.no_grad():
                robust[k] += (model(adversarial).argmax(1) == y).sum().item()
    n = len(test)
    return {
        "lipschitz_logits": bound,
        "clean_accuracy": correct / n,
        "certified_accuracy": [c / n for c in certified],
        "pgd_accuracy": [r / n for r in robust],
        "examples": n,
        "note": f"{epochs} epochs, {seconds:.0f} s",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--recertify", action="store_true", help="certify again even where a report is up to date")
    args = parser.parse_args()
    rows = {}
    for name, (folder, options) in RUNS.items():
        if not (Path(folder) / "checkpoint.json").is_file():
            mondeq("train", *options, "--out", folder, "--no-progress")
        report = Path(folder) / "certify.json"
        eps = [str(e) for e in EPS]
        stale = not report.is_file() or report.stat().st_mtime < (Path(folder) / "checkpoint.json").stat().st_mtime
        if stale or args.recertify:
            mondeq("certify", folder, "--eps", *eps, "--limit", str(args.limit), "--pgd-steps", str(args.pgd_steps))
        rows[name] = json.loads(report.read_text())
        meta = json.loads((Path(folder) / "checkpoint.json").read_text())
        rows[name]["note"] = f"{meta['epoch']} epoch(s), `mondeq train {' '.join(options)}`"
        mondeq("plot", folder, "--max-iter", "50")
    rows["3-layer MLP (784-87-87-10)"] = mlp_row(args.limit, args.pgd_steps)
    Path("docs/robustness/results.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| model | training | Lipschitz bound (logits, l2) | clean | "
        + " | ".join(f"certified / PGD at eps={e:g}" for e in EPS)
        + " |",
        "|---|---|---|---|" + "---|" * len(EPS),
    ]
    for name, r in rows.items():
        cells = [f"{100 * c:.1f}% / {100 * p:.1f}%" for c, p in zip(r["certified_accuracy"], r["pgd_accuracy"])]
        head = f"| {name} | {r['note']} | {r['lipschitz_logits']:.3g} | {100 * r['clean_accuracy']:.1f}% | "
        lines.append(head + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
