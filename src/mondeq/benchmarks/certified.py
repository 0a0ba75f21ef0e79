"""Certified robustness trained for, on Fashion-MNIST: monDEQs against explicit networks of the
same size, under the same wall-time budget, in l2 and in l-infinity.

- l2: a :math:`\\gamma`-Lipschitz monDEQ (``mondeq train --model fc --lipschitz 1 --certified l2:0.3``)
  against a 784-120-10 MLP whose two layers carry the same exact norm bounds (product
  :math:`\\gamma`), both trained on the Lipschitz-margin loss; beside them the plain fc monDEQ,
  certified after the fact with its estimated bound (what ``mondeq certify`` gave before).
- l-infinity: the interval monDEQ (``--model fc --interval --m 0.5 --certified linf:0.1``) against
  the standard small IBP CNN (conv 16-4x4/2, conv 32-4x4/2, fc 56, fc 10), both trained with interval
  bound propagation (radius ramped after a warm-up, clean loss weight 1 -> 1/2).

Every model trains for ``MONDEQ_CERTIFIED_MINUTES`` (default 4; the tiny smoke run: 1 s on
synthetic images) with AdamW, one-cycle over the budget, batch 128; monDEQs through
:class:`~mondeq.train.Trainer` (what ``mondeq train`` runs), the explicit ones through the same
schedule and loss by :func:`~mondeq.benchmarks.common.train_for`. Each is then evaluated on the
first ``LIMIT`` test images: clean accuracy, certified accuracy and accuracy under a
``PGD_STEPS``-step PGD attack at every radius (pixels in [0, 1]). Its results go to a page of their
own, ``docs/robustness.md``.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..data import ImageDataset, load_dataset
from ..errors import DataError, ignore_convergence_warnings
from ..models import NormBound
from ..robust import CertifiedObjective, evaluate_robustness, lipschitz_bound, parse_certified
from ..train import TrainConfig, Trainer
from . import Section
from .common import pyplot, save_figure, synthetic_images, train_for

#: Radii reported per norm (pixels in [0, 1]).
EPS = {"l2": [0.1, 0.3, 0.5], "linf": [0.05, 0.1]}
#: The Lipschitz bound of the l2 models (model input units) and the radii they train for.
GAMMA, L2_TRAINING, LINF_TRAINING = 1.0, "l2:0.3", "linf:0.1"
LIMIT, PGD_STEPS = 1000, 20
#: Shared by every model: the optimiser and its schedule; and of certified training, the radius's
#: warm-up and ramp (epochs).
SETTINGS = {"lr": 1e-3, "lr_schedule": "one-cycle", "eval_every": 0}
SCHEDULE = {"certified_warmup": 1.0, "certified_ramp": 3.0}

#: name: (norm, ``mondeq train`` options of a monDEQ, or ``None`` for an explicit network).
MODELS: dict[str, tuple[str, dict | None]] = {
    "monDEQ fc, plain training, bound estimated": ("l2", {"model": "fc"}),
    f"monDEQ fc, {GAMMA:g}-Lipschitz by construction": (
        "l2",
        {"model": "fc", "certified": L2_TRAINING, "model_options": {"lipschitz": GAMMA}},
    ),
    f"MLP 784-120-10, {GAMMA:g}-Lipschitz by construction": ("l2", None),
    "monDEQ fc, interval operator (IBP)": (
        "linf",
        {"model": "fc", "certified": LINF_TRAINING, "model_options": {"interval": True, "m": 0.5, "width": 100}},
    ),
    "CNN 16-32-56 (IBP)": ("linf", None),
}


def lipschitz_mlp(gamma: float, hidden: int = 120) -> nn.Module:
    """784-``hidden``-10 ReLU network whose two layers keep exact norms ``<= sqrt(gamma)``: the map is
    ``gamma``-Lipschitz in l2 for every weight (ReLU is 1-Lipschitz)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    for layer in (model[1], model[3]):
        parametrize.register_parametrization(layer, "weight", NormBound(math.sqrt(gamma)))
    return model


def ibp_cnn() -> nn.Module:
    """The small CNN of interval bound propagation papers (96,930 parameters on 28x28 images)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 56),
        nn.ReLU(),
        nn.Linear(56, 10),
    )


def data(tiny: bool) -> tuple[ImageDataset, ImageDataset]:
    if not tiny:
        try:
            return load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test").subset(LIMIT)
        except DataError:
            pass
    synthetic = synthetic_images()
    return synthetic, synthetic.subset(16)


def train_mondeq(options: dict, minutes: float, train: ImageDataset, test: ImageDataset) -> tuple[nn.Module, dict]:
    """A monDEQ trained by :class:`~mondeq.train.Trainer` for ``minutes``: the model and a note."""
    with tempfile.TemporaryDirectory() as folder:
        schedule = SCHEDULE if "certified" in options else {}
        config = TrainConfig(**{**SETTINGS, **schedule, **options, "time_budget": minutes, "out": f"{folder}/run"})
        trainer = Trainer(config, train, test, progress=False)
        with ignore_convergence_warnings():
            history = trainer.fit()
    return trainer.model, {"epochs": len(history), "seconds": history[-1]["elapsed_seconds"]}


def run(tiny: bool = False) -> dict:
    minutes = 1 / 60 if tiny else float(os.environ.get("MONDEQ_CERTIFIED_MINUTES", 4))
    pgd_steps = 2 if tiny else PGD_STEPS
    train, test = data(tiny)
    rows = {}
    for name, (norm, options) in MODELS.items():
        torch.manual_seed(0)
        if options is not None:
            sized = {**options, "model_options": {**options.get("model_options", {}), **({"width": 8} if tiny else {})}}
            model, note = train_mondeq(sized, minutes, train, test)
            config = model.config
            if config.lipschitz is not None:
                bound, source = config.lipschitz, "by construction"
            elif norm == "l2":
                bound, source = lipschitz_bound(model).logits, "estimated"
            else:
                bound, source = None, "interval bounds"
            model.layer.configure(tol=1e-4)  # certify the true equilibrium's margins
            command = " ".join(_flags(sized))
        else:
            model = lipschitz_mlp(GAMMA) if norm == "l2" else ibp_cnn()
            training = L2_TRAINING if norm == "l2" else LINF_TRAINING
            objective = CertifiedObjective(*parse_certified(training), SCHEDULE["certified_warmup"], SCHEDULE["certified_ramp"])
            config = TrainConfig(**{**SETTINGS, "model": "fc", "time_budget": minutes})
            lipschitz = GAMMA if norm == "l2" else None

            def loss(model, x, y, t, objective=objective, lipschitz=lipschitz):
                return objective.loss(model, x, model(x), y, t, train.info, lipschitz)

            timed = train_for(model, config, train, loss)
            note = {"epochs": timed.epochs, "seconds": timed.seconds}
            bound, source = (GAMMA, "by construction") if norm == "l2" else (None, "interval bounds")
            command = f"explicit, trained here for {training}"
        with ignore_convergence_warnings():
            report = evaluate_robustness(model, test, EPS[norm], bound, pgd_steps, norm=norm)
        rows[name] = {
            **report,
            **note,
            "lipschitz_logits": bound,
            "bound_source": source,
            "parameters": sum(p.numel() for p in model.parameters()),
            "command": command,
        }
    return {"rows": rows, "eps": EPS, "minutes": minutes, "limit": len(test), "pgd_steps": pgd_steps}


def _flags(options: dict) -> list[str]:
    """``mondeq train`` flags of a :data:`MODELS` entry (the shared settings left out)."""
    flags = []
    for key, value in {**{k: v for k, v in options.items() if k != "model_options"}, **options.get("model_options", {})}.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def markdown(result: dict) -> str:
    lines = []
    for norm, title in (("l2", "l2 (Lipschitz bounds)"), ("linf", "l-infinity (interval bounds)")):
        eps = result["eps"][norm]
        lines += [
            f"**{title}**, {result['minutes']:g} minutes of training per model, first {result['limit']:,} test images:",
            "",
            "| model | parameters | epochs | clean | "
            + " | ".join(f"certified / PGD at {e:g}" for e in eps)
            + " | bound (logits) | how trained |",
            "|---|---|---|---|" + "---|" * len(eps) + "---|---|",
        ]
        for name, r in result["rows"].items():
            if r["norm"] != norm:
                continue
            cells = [f"{100 * c:.1f}% / {100 * p:.1f}%" for c, p in zip(r["certified_accuracy"], r["pgd_accuracy"])]
            bound = f"{r['lipschitz_logits']:.3g} ({r['bound_source']})" if r["lipschitz_logits"] else r["bound_source"]
            lines.append(
                f"| {name} | {r['parameters']:,} | {r['epochs']} | {100 * r['clean_accuracy']:.1f}% | "
                + " | ".join(cells)
                + f" | {bound} | `{r['command']}` |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, folder: Path) -> list:
    """Certified (solid) and PGD (dotted) accuracy against the radius, one panel per norm."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, norm in zip(axes, ("l2", "linf")):
        eps = [0.0, *result["eps"][norm]]
        for k, (name, r) in enumerate(result["rows"].items()):
            if r["norm"] != norm:
                continue
            clean = 100 * r["clean_accuracy"]
            ax.plot(eps, [clean, *[100 * a for a in r["certified_accuracy"]]], "o-", color=f"C{k}", label=name)
            ax.plot(eps, [clean, *[100 * a for a in r["pgd_accuracy"]]], "s:", color=f"C{k}", alpha=0.6)
        ax.set(
            xlabel=f"{norm} radius (pixels in [0, 1])", ylabel="accuracy (%)", title=f"{norm}: certified (solid), PGD (dotted)"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return [save_figure(fig, folder / "certified.png")]


SECTION = Section(
    title="Certified robustness on Fashion-MNIST: monDEQs and explicit networks trained for it",
    order=8,
    run=run,
    markdown=markdown,
    plot=plot,
    page="robustness.md",
    introduction=(
        "`mondeq bench --only certified` trains five models of at most 100,000 parameters for the same "
        "wall time each and evaluates them on the Fashion-MNIST test images at radii given on the pixel "
        "scale ([0, 1]). *Certified*: correctly classified and provably so for every perturbation of that "
        "norm (l2: logit margin > √2·L·eps in the model's input units; l-infinity: interval bounds through "
        "the network, the ball clipped to the image range); *PGD*: accuracy under a 20-step PGD attack "
        "at the same radius, an upper bound that a sound certificate never exceeds. One model's "
        "certificate: `mondeq certify RUN --norm l2|linf`."
    ),
)
