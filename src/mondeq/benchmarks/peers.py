"""mondeq against its peers: a generic DEQ library and the paper's Neural ODE baseline.

(a) torchdeq's Anderson and Broyden solvers find the same monotone equilibrium
:math:`z = \\mathrm{relu}(Wz + Ux + b)` (the single-conv model's weights) with torchdeq's
implicit backward: iterations, time, agreement with mondeq's fixed point.
(b) mondeq's single-conv monDEQ, a Neural ODE (torchdiffeq, dopri5) and an explicit CNN of
similar parameter count, each trained on Fashion-MNIST for the same wall-clock budget: test
accuracy against training time.

torchdeq and torchdiffeq are optional (``pip install mondeq[bench]``); missing peers are
reported as skipped.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batches, ImageDataset, load_dataset
from ..errors import DataError, ignore_convergence_warnings
from ..models import MonDEQClassifier, preset_config
from . import Section, markdown_table
from .common import Scale, batch, model_at, pyplot, save_figure, synthetic_images


def deq_peers(scale: Scale, tol: float = 1e-4, max_iter: int = 200) -> list[dict]:
    try:
        from torchdeq import get_deq
    except ImportError:
        return [{"solver": "torchdeq", "skipped": "torchdeq is not installed (pip install mondeq[bench])"}]
    model = model_at(scale, "single-conv", trained=True) or model_at(scale, "single-conv")
    layer, op = model.layer, model.layer.linear
    x, y = batch(scale)
    layer.configure(tol=tol, max_iter=max_iter)
    rows = []
    with torch.no_grad():
        z_ref = op.flatten(layer(x))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    stats = layer.stats
    rows.append(
        {
            "solver": "mondeq PR",
            "forward_iterations": stats.forward.iterations,
            "backward_iterations": stats.backward.iterations,
            "seconds": stats.forward.seconds + stats.backward.seconds,
            "difference": 0.0,
            "residual": stats.forward.residual,
        }
    )
    for solver in ("anderson", "broyden"):
        weights = op.weights()  # a fresh graph per solver: torchdeq differentiates through f
        deq = get_deq(
            f_solver=solver,
            b_solver=solver,
            f_max_iter=max_iter,
            b_max_iter=max_iter,
            f_tol=tol,
            b_tol=tol,
            f_stop_mode="rel",
            b_stop_mode="rel",
        )
        injection = op.inject(x)
        f = lambda z, inj=injection, w=weights: torch.relu(op.apply_weights(z, w) + inj)  # noqa: E731
        z0 = torch.zeros_like(injection)
        start = time.perf_counter()
        z_out, info = deq(f, z0)
        forward = time.perf_counter() - start
        z = z_out[-1]
        logits = model.readout(model.pool(z))
        start = time.perf_counter()
        F.cross_entropy(logits, y).backward()
        backward = time.perf_counter() - start
        with torch.no_grad():
            fz = torch.relu(op.multiply(z) + injection)
            residual = ((fz - z).norm() / fz.norm()).item()
            difference = ((z - z_ref).norm() / z_ref.norm()).item()
        rows.append(
            {
                "solver": f"torchdeq {solver}",
                "forward_iterations": int(info["nstep"].float().mean().item()),
                "backward_iterations": None,
                "seconds": forward + backward,
                "difference": difference,
                "residual": residual,
            }
        )
    return rows


class ODEFunc(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.evaluations = 0

    def forward(self, t, z):
        self.evaluations += 1
        return self.conv2(torch.relu(self.conv1(torch.relu(z))))


class NeuralODE(nn.Module):
    """Input convolution, an ODE block integrated over [0, 1] (dopri5), 4x4 pooling, linear readout."""

    def __init__(self, channels: int = 48, tol: float = 1e-3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.func = ODEFunc(channels)
        self.readout = nn.Linear(channels * 49, 10)
        self.tol = tol

    def forward(self, x):
        from torchdiffeq import odeint

        z = self.stem(x)
        z = odeint(self.func, z, torch.tensor([0.0, 1.0]), rtol=self.tol, atol=self.tol, method="dopri5")[-1]
        return self.readout(F.avg_pool2d(torch.relu(z), 4).flatten(1))


def explicit_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(64 * 16, 10),
    )


def race(scale: Scale, budget: float, checkpoints: int = 4) -> dict:
    """Train each model for ``budget`` seconds; test accuracy at evenly spaced times."""
    try:
        train = load_dataset("fashion-mnist", "train")
        test = load_dataset("fashion-mnist", "test").subset(2000)
    except DataError:
        train = test = None
    if scale.tiny or train is None:
        train = test = synthetic_images()
    torch.manual_seed(0)
    channels = [scale.single_channels]
    models: dict[str, nn.Module] = {
        "mondeq single-conv": MonDEQClassifier(preset_config("single-conv", "fashion-mnist", 1, 28, 10, channels=channels))
    }
    try:
        import torchdiffeq  # noqa: F401

        models["Neural ODE (dopri5)"] = NeuralODE(8 if scale.tiny else 48)
    except ImportError:
        pass
    models["explicit CNN"] = explicit_cnn()
    curves = {}
    for name, model in models.items():
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        points, trained_for, epoch = [], 0.0, 0
        marks = [budget * (k + 1) / checkpoints for k in range(checkpoints)]
        while marks:
            for x, y in Batches(train, scale.batch, shuffle=True, epoch=epoch):
                start = time.perf_counter()
                model.train()
                optimizer.zero_grad()
                with ignore_convergence_warnings():
                    F.cross_entropy(model(x), y).backward()
                optimizer.step()
                trained_for += time.perf_counter() - start
                if trained_for >= marks[0]:
                    points.append((trained_for, accuracy(model, test)))
                    marks.pop(0)
                    if not marks:
                        break
            epoch += 1
        curves[name] = {"points": points, "parameters": sum(p.numel() for p in model.parameters())}
    return {"budget": budget, "curves": curves, "test_examples": len(test)}


@torch.no_grad()
def accuracy(model: nn.Module, test: ImageDataset) -> float:
    model.eval()
    correct = 0
    for x, y in Batches(test, 500):
        with ignore_convergence_warnings():
            correct += (model(x).argmax(1) == y).sum().item()
    return correct / len(test)


def run(tiny: bool = False, budget: float | None = None) -> dict:
    scale = Scale.get(tiny)
    return {"deq": deq_peers(scale, max_iter=30 if tiny else 200), "race": race(scale, budget or (2.0 if tiny else 120.0))}


def plot(result: dict, folder) -> list:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in result["race"]["curves"].items():
        times = [t for t, _ in curve["points"]]
        accs = [100 * a for _, a in curve["points"]]
        ax.plot(times, accs, "o-", label=f"{name} ({curve['parameters'] / 1e3:.0f}k params)")
    ax.set(xlabel="training wall time (s)", ylabel="test accuracy (%)", title="Fashion-MNIST, equal training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return [save_figure(fig, folder / "peers_accuracy_vs_time.png")]


def markdown(result: dict) -> str:
    lines = [
        "**(a) The same monotone equilibrium, solved by torchdeq** (single-conv weights after one epoch, batch of "
        "Fashion-MNIST test images, relative tolerance 1e-4, forward + backward for a cross-entropy loss).",
        "",
    ]
    solves = []
    for r in result["deq"]:
        if "skipped" in r:
            solves.append([r["solver"], f"skipped: {r['skipped']}", "", "", "", ""])
            continue
        bwd = "–" if r["backward_iterations"] is None else r["backward_iterations"]
        solves.append(
            [
                r["solver"],
                r["forward_iterations"],
                bwd,
                f"{1e3 * r['seconds']:.0f} ms",
                f"{r['difference']:.1e}",
                f"{r['residual']:.1e}",
            ]
        )
    header = ["solver", "forward iterations", "backward iterations", "forward + backward time"]
    lines += markdown_table([*header, "rel. difference to mondeq's z*", "final residual"], solves)
    race = result["race"]
    lines += [
        "",
        f"**(b) Accuracy at equal training time** ({race['budget']:.0f} s of training each, test accuracy on "
        f"{race['test_examples']} test images; evaluation time not counted).",
        "",
        *markdown_table(
            ["model", "parameters", *(f"acc. at ~{race['budget'] * (k + 1) / 4:.3g} s" for k in range(4))],
            [
                [name, f"{curve['parameters']:,}", *(f"{100 * a:.1f}% ({t:.0f} s)" for t, a in curve["points"])]
                for name, curve in race["curves"].items()
            ],
        ),
    ]
    return "\n".join(lines)


SECTION = Section(title="4. Peers on the same problem", order=4, run=run, markdown=markdown, plot=plot)
