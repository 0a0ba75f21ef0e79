"""Peak memory of a training step against the number of solver iterations.

mondeq's implicit gradients against backpropagation through the unrolled iterations (the same
forward-backward iteration recorded on the autograd tape). Each configuration runs in a fresh
process and reports the growth of its peak resident memory during one training step, and the
bytes autograd saved for backward.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ignore_convergence_warnings
from . import Section, markdown_table
from .common import Scale, batch, pyplot, save_figure

ITERATIONS = (5, 10, 20, 40, 80)


def child(mode: str, iterations: int, tiny: bool) -> dict:
    scale = Scale.get(tiny)
    scale.batch = min(scale.batch, 32)
    torch.manual_seed(0)
    from ..models import MonDEQClassifier

    model = MonDEQClassifier(scale.config("single-conv"))
    x, y = batch(scale)
    layer, op = model.layer, model.layer.linear
    layer.configure(tol=1e-300, max_iter=iterations)  # the implicit mode runs exactly `iterations` iterations
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    def step():
        model.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if mode == "implicit":
                with ignore_convergence_warnings():
                    logits = model(x)
            else:
                injection = op.inject(x)
                alpha = 0.5 * op.m / op.lipschitz() ** 2
                z = torch.zeros_like(injection)
                for _ in range(iterations):
                    z = torch.relu((1 - alpha) * z + alpha * (op.multiply(z) + injection))
                logits = model.readout(model.pool(z))
            loss = F.cross_entropy(logits, y)
        loss.backward()

    op.lipschitz()
    before = reset_peak_rss()
    step()
    return {"mode": mode, "iterations": iterations, "peak_growth_mb": (peak_rss() - before) / 1024, "saved_mb": saved / 2**20}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss() -> int:
    """Peak resident memory (kB) since the last reset; falls back to getrusage off Linux."""
    try:
        return _status_kb("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> int:
    """Reset the peak to the current resident memory (Linux clear_refs 5) and return it in kB.

    ``getrusage``'s maximum is inherited from the parent across fork and exec, so a child of a
    large process would report no growth at all; the per-process VmHWM can be reset instead.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmRSS")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(tiny: bool = False) -> dict:
    iterations = (2, 4) if tiny else ITERATIONS
    rows = []
    for mode in ("implicit", "unrolled"):
        for k in iterations:
            command = [sys.executable, "-m", "mondeq.benchmarks.memory", mode, str(k), "tiny" if tiny else "full"]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    return {"rows": rows, "batch": min(Scale.get(tiny).batch, 32)}


def plot(result: dict, folder) -> list:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode in ("implicit", "unrolled"):
        rows = [r for r in result["rows"] if r["mode"] == mode]
        its = [r["iterations"] for r in rows]
        axes[0].plot(its, [r["peak_growth_mb"] for r in rows], "o-", label=mode)
        axes[1].plot(its, [r["saved_mb"] for r in rows], "o-", label=mode)
    axes[0].set(xlabel="solver iterations", ylabel="MB", title="peak memory growth of a training step")
    axes[1].set(xlabel="solver iterations", ylabel="MB", title="tensors saved for backward")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return [save_figure(fig, folder / "memory_vs_iterations.png")]


def markdown(result: dict) -> str:
    its = sorted({r["iterations"] for r in result["rows"]})
    lines = [
        f"single-conv at the paper's size, batch {result['batch']}: growth of the process's peak resident memory during "
        "one training step (fresh process per cell), and the tensors autograd saved for backward.",
        "",
    ]
    table = []
    for mode in ("implicit", "unrolled"):
        rows = {r["iterations"]: r for r in result["rows"] if r["mode"] == mode}
        table.append([mode, *(f"{rows[k]['peak_growth_mb']:.0f} MB peak / {rows[k]['saved_mb']:.0f} MB saved" for k in its)])
    lines += markdown_table(["gradients", *(f"{k} iterations" for k in its)], table)
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "tiny")))


SECTION = Section(title="5. Memory against solver iterations", order=5, run=run, markdown=markdown, plot=plot)
