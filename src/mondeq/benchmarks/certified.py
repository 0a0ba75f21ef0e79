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

import json
import math
import os
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..data import ImageDataset, load_dataset
from ..errors import DataError, ignore_convergence_warnings
from ..models import ConvNormBound, NormBound
from ..robust import CertifiedObjective, evaluate_robustness, lipschitz_bound, parse_certified
from ..train import TrainConfig, Trainer
from . import Section, markdown_table
from .common import pyplot, save_figure, synthetic_images, train_for

#: Radii reported per norm (pixels in [0, 1]).
EPS = {"l2": [0.1, 0.3, 0.5], "linf": [0.05, 0.1]}
#: The Lipschitz bound of the l2 models (model input units) and the radii they train for.
GAMMA, L2_TRAINING, LINF_TRAINING = 1.0, "l2:0.3", "linf:0.1"
LIMIT, PGD_STEPS = 1000, 20
#: Shared by every model: the optimiser and its schedule; and of certified training, the radius's
#: warm-up and ramp (epochs, at 4 minutes: scaled with the budget, as the number of epochs is).
SETTINGS = {"lr": 1e-3, "lr_schedule": "one-cycle", "eval_every": 0}
SCHEDULE = {"certified_warmup": 1.0, "certified_ramp": 3.0}
#: The convolutional interval monDEQ runs about a quarter of the CNN's epochs: its ramp in proportion.
CONV_INTERVAL_SCHEDULE = {"certified_warmup": 0.25, "certified_ramp": 1.5}

INTERVAL_CONV = "monDEQ single-conv, interval operator (IBP)"
IBP_CNN = "CNN 16-32-56 (IBP)"
#: name: (norm, ``mondeq train`` options of a monDEQ, or ``None`` for an explicit network of :data:`EXPLICIT`).
MODELS: dict[str, tuple[str, dict | None]] = {
    f"monDEQ fc, {GAMMA:g}-Lipschitz by construction": (
        "l2",
        {"model": "fc", "certified": L2_TRAINING, "model_options": {"lipschitz": GAMMA}},
    ),
    f"MLP 784-120-10, {GAMMA:g}-Lipschitz by construction": ("l2", None),
    f"monDEQ single-conv, {GAMMA:g}-Lipschitz by construction": (
        "l2",
        {
            "model": "single-conv",
            "certified": L2_TRAINING,
            "model_options": {"lipschitz": GAMMA, "channels": [54], "stride": 2, "pool": 2},
        },
    ),
    f"CNN 16-32-56, {GAMMA:g}-Lipschitz by construction": ("l2", None),
    "monDEQ fc, interval operator (IBP)": (
        "linf",
        {"model": "fc", "certified": LINF_TRAINING, "model_options": {"interval": True, "m": 0.5, "width": 100}},
    ),
    INTERVAL_CONV: (
        "linf",
        {
            "model": "single-conv",
            "certified": LINF_TRAINING,
            **CONV_INTERVAL_SCHEDULE,
            "model_options": {"interval": True, "m": 0.5, "channels": [16], "stride": 2, "pool": 2},
        },
    ),
    IBP_CNN: ("linf", None),
}
#: The l-infinity pair trained once more, for :data:`LONG_MINUTES` each.
LONG_PAIR = (INTERVAL_CONV, IBP_CNN)
LONG_MINUTES = 20.0


def lipschitz_mlp(gamma: float, hidden: int = 120) -> nn.Module:
    """784-``hidden``-10 ReLU network whose two layers keep exact norms ``<= sqrt(gamma)``: the map is
    ``gamma``-Lipschitz in l2 for every weight (ReLU is 1-Lipschitz)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    for layer in (model[1], model[3]):
        parametrize.register_parametrization(layer, "weight", NormBound(math.sqrt(gamma)))
    return model


def lipschitz_cnn(gamma: float, image_size: int = 28) -> nn.Module:
    """The IBP CNN's shape with every layer's exact norm ``<= gamma ** (1/4)``: two circular strided
    convolutions (16 channels 5x5 / 2, 32 channels 3x3 / 2; their norm is exact per frequency,
    :class:`~mondeq.models.ConvNormBound`), a 56-unit and a 10-unit linear layer (93,490 parameters);
    ``gamma``-Lipschitz in l2 for every weight."""
    bound = gamma**0.25
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2, padding=2, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * (image_size // 4) ** 2, 56),
        nn.ReLU(),
        nn.Linear(56, 10),
    )
    sides = (image_size, image_size // 2)
    for conv, side in zip((model[0], model[2]), sides):
        parametrize.register_parametrization(conv, "weight", ConvNormBound(bound, (side, side), conv.stride[0]))
    for layer in (model[5], model[7]):
        parametrize.register_parametrization(layer, "weight", NormBound(bound))
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


#: The explicit networks of :data:`MODELS` and how each is built.
EXPLICIT = {
    f"MLP 784-120-10, {GAMMA:g}-Lipschitz by construction": lambda: lipschitz_mlp(GAMMA),
    f"CNN 16-32-56, {GAMMA:g}-Lipschitz by construction": lambda: lipschitz_cnn(GAMMA),
    IBP_CNN: ibp_cnn,
}


def data(tiny: bool) -> tuple[ImageDataset, ImageDataset]:
    if not tiny:
        try:
            return load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test").subset(LIMIT)
        except DataError:
            pass
    synthetic = synthetic_images()
    return synthetic, synthetic.subset(16)


def train_mondeq(options: dict, minutes: float, train: ImageDataset, test: ImageDataset) -> tuple[nn.Module, dict]:
    """A monDEQ trained by :class:`~mondeq.train.Trainer` for ``minutes``: the model and a note. A
    certified schedule (the options' own, else :data:`SCHEDULE`) is in epochs at 4 minutes, scaled
    with the budget."""
    with tempfile.TemporaryDirectory() as folder:
        schedule = {}
        if "certified" in options:
            schedule = {k: options.get(k, v) * minutes / 4 for k, v in SCHEDULE.items()}
        config = TrainConfig(**{**SETTINGS, **options, **schedule, "time_budget": minutes, "out": f"{folder}/run"})
        trainer = Trainer(config, train, test, progress=False)
        with ignore_convergence_warnings():
            history = trainer.fit()
    return trainer.model, {"epochs": len(history), "seconds": history[-1]["elapsed_seconds"]}


def train_and_evaluate(name: str, minutes: float, train: ImageDataset, test: ImageDataset, tiny: bool, pgd_steps: int) -> dict:
    """One row of the table: model ``name`` of :data:`MODELS` trained for ``minutes`` and evaluated."""
    norm, options = MODELS[name]
    torch.manual_seed(0)
    if options is not None:
        sized = {**options, "model_options": {**options.get("model_options", {}), **({"width": 8} if tiny else {})}}
        if tiny and sized["model"] != "fc":
            sized["model_options"].pop("width")
            sized["model_options"]["channels"] = [4]
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
        model = EXPLICIT[name]()
        training = L2_TRAINING if norm == "l2" else LINF_TRAINING
        scale = minutes / 4
        objective = CertifiedObjective(
            *parse_certified(training), SCHEDULE["certified_warmup"] * scale, SCHEDULE["certified_ramp"] * scale
        )
        config = TrainConfig(**{**SETTINGS, "model": "fc", "time_budget": minutes})
        lipschitz = GAMMA if norm == "l2" else None
        timed = train_for(model, config, train, objective.bind(model, train.info, lipschitz))
        note = {"epochs": timed.epochs, "seconds": timed.seconds}
        bound, source = (GAMMA, "by construction") if norm == "l2" else (None, "interval bounds")
        command = f"explicit, trained here for {training}"
    with ignore_convergence_warnings():
        report = evaluate_robustness(model, test, EPS[norm], bound, pgd_steps, norm=norm)
    return {
        **report,
        **note,
        "lipschitz_logits": bound,
        "bound_source": source,
        "parameters": sum(p.numel() for p in model.parameters()),
        "command": command,
    }


def run(tiny: bool = False) -> dict:
    """Every model of :data:`MODELS` for ``MONDEQ_CERTIFIED_MINUTES`` (default 4; 0: none), then the pair of
    :data:`LONG_PAIR` for ``MONDEQ_CERTIFIED_LONG_MINUTES`` (default :data:`LONG_MINUTES`; 0: skipped).
    With ``MONDEQ_CERTIFIED_PARTIAL`` set, each finished row is also written to that JSON file."""
    minutes = 1 / 60 if tiny else float(os.environ.get("MONDEQ_CERTIFIED_MINUTES", 4))
    long_minutes = 0.0 if tiny else float(os.environ.get("MONDEQ_CERTIFIED_LONG_MINUTES", LONG_MINUTES))
    pgd_steps = 2 if tiny else PGD_STEPS
    train, test = data(tiny)
    result: dict = {"rows": {}, "eps": EPS, "minutes": minutes, "limit": len(test), "pgd_steps": pgd_steps}
    plan = [(name, minutes, result["rows"]) for name in MODELS if minutes]
    if long_minutes:
        result["long"] = {"minutes": long_minutes, "rows": {}}
        plan += [(name, long_minutes, result["long"]["rows"]) for name in LONG_PAIR]
    for name, budget, rows in plan:
        rows[name] = train_and_evaluate(name, budget, train, test, tiny, pgd_steps)
        partial = os.environ.get("MONDEQ_CERTIFIED_PARTIAL")
        if partial:
            Path(partial).write_text(json.dumps(result, indent=1, default=str))
    return result


def _flags(options: dict) -> list[str]:
    """``mondeq train`` flags of a :data:`MODELS` entry (the shared settings left out)."""
    flags = []
    for key, value in {**{k: v for k, v in options.items() if k != "model_options"}, **options.get("model_options", {})}.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return flags


def markdown(result: dict) -> str:
    lines = []
    tables = [("l2", "l2 (Lipschitz bounds)", result), ("linf", "l-infinity (interval bounds)", result)]
    if "long" in result:
        tables.append(("linf", "l-infinity, trained longer", {**result, **result["long"]}))
    for norm, title, part in tables:
        eps = part["eps"][norm]
        lines += [
            f"**{title}**, {part['minutes']:g} minutes of training per model, first {part['limit']:,} test images:",
            "",
        ]
        rows = []
        for name, r in part["rows"].items():
            if r["norm"] != norm:
                continue
            cells = [f"{100 * c:.1f}% / {100 * p:.1f}%" for c, p in zip(r["certified_accuracy"], r["pgd_accuracy"])]
            bound = f"{r['lipschitz_logits']:.3g} ({r['bound_source']})" if r["lipschitz_logits"] else r["bound_source"]
            rows.append(
                [
                    name,
                    f"{r['parameters']:,}",
                    r["epochs"],
                    f"{100 * r['clean_accuracy']:.1f}%",
                    *cells,
                    bound,
                    f"`{r['command']}`",
                ]
            )
        header = ["model", "parameters", "epochs", "clean", *(f"certified / PGD at {e:g}" for e in eps)]
        lines += [*markdown_table([*header, "bound (logits)", "how trained"], rows), ""]
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
        "`mondeq bench --only certified` trains models of at most 100,000 parameters for the same "
        "wall time each (4 minutes; the l-infinity convolutional pair once more for 20) and evaluates "
        "them on the first 1,000 Fashion-MNIST test images at radii given on the pixel scale ([0, 1]). "
        "*Certified*: correctly classified and provably so for every perturbation of that norm (l2: logit "
        "margin > √2·L·eps in the model's input units; l-infinity: interval bounds through the network, "
        "the ball clipped to the image range); *PGD*: accuracy under a 20-step PGD attack at the same "
        "radius, an upper bound that a sound certificate never exceeds. A certificate holds for the exact "
        "equilibrium network: l2 margins are lowered by what the solver's remaining residual allows, both "
        "norms are certified in float64, and interval bounds are widened by their rounding error "
        "([the math](math.md#what-a-certificate-accounts-for)). One model's certificate: "
        "`mondeq certify RUN --norm l2|linf`."
    ),
)
