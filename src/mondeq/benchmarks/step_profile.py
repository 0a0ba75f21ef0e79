"""Where a training step's time goes: the fast recipe's monDEQ against the race's explicit CNN.

Each model trains by the step of ``mondeq train`` (:func:`~mondeq.benchmarks.common.train_for`, the
``fmnist-fast`` recipe's settings and fixed-point reuse) on the first ``IMAGES`` Fashion-MNIST training
images: one epoch to warm up (reuse filled, caches built), then ``torch.profiler`` over the next
``PROFILED`` steps. Each aten operator's own time is put in one of :data:`CATEGORIES`; "Python and
dispatch" is the step's wall time the operators do not account for; the optimiser's step (its
operators counted in their categories) is shown beside. The monDEQ runs twice: with its
per-frequency products through the DFT as matrix products (the default on its 14x14 grid) and through
FFTs (the path before; ``MATRIX_DFT_MAX_SIDE`` set to 0). The epoch ratio is measured on the same
images, each model's second epoch, the models timed one after the other in one process, twice.
"""

from __future__ import annotations

import os
import time
from unittest import mock

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ..models import MonDEQClassifier, preset_config
from ..operators import fourier
from ..train import RECIPES, TrainConfig
from . import Section, markdown_table
from .common import train_for
from .peers import explicit_cnn
from .time_to_accuracy import RECIPE, data

#: Training images of the profile and of the epoch ratio; steps profiled.
IMAGES = int(os.environ.get("MONDEQ_STEP_PROFILE_IMAGES", 7680))
PROFILED = 16

#: Operator categories, in report and matching order: a name and the aten operators (exact names, or
#: prefixes ending in ``*``).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "matrix products (DFT, per-frequency, readout)": ("aten::mm", "aten::bmm", "aten::addmm*", "aten::baddbmm*"),
    "FFTs": ("aten::_fft_*",),
    "convolutions": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution", "aten::conv*"),
    # before the inverses, whose linalg_* prefix would claim linalg_vector_norm: the first match counts
    "residual norms and reductions": ("aten::linalg_vector_norm", "aten::dist", "aten::sum", "aten::mean", "aten::norm"),
    "per-frequency inverses": ("aten::linalg_*", "aten::_linalg_*"),
    "elementwise passes": (
        "aten::add*",
        "aten::sub*",
        "aten::mul*",
        "aten::div*",
        "aten::clamp*",
        "aten::relu*",
        "aten::threshold*",
        "aten::lerp*",
        "aten::neg*",
        "aten::where",
        "aten::abs*",
        "aten::gt",
        "aten::lt",
        "aten::ge",
        "aten::le",
    ),
    "layout copies and fills": (
        "aten::copy_",
        "aten::clone",
        "aten::cat",
        "aten::stack",
        "aten::index*",
        "aten::fill_",
        "aten::zero_",
    ),
    "pooling and loss": ("aten::avg_pool*", "aten::adaptive*", "aten::_log_softmax*", "aten::nll_loss*", "aten::cross_entropy*"),
}


def category(name: str) -> str:
    """The category of aten operator ``name`` (``"other operators"`` when none names it)."""
    for key, patterns in CATEGORIES.items():
        for pattern in patterns:
            if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
                return key
    return "other operators"


def _models(tiny: bool) -> dict:
    options = dict(RECIPES[RECIPE].settings["model_options"], **({"channels": [4]} if tiny else {}))

    def mondeq() -> MonDEQClassifier:
        return MonDEQClassifier(preset_config("single-conv", "fashion-mnist", 1, 28, 10, **options))

    return {"monDEQ, matrix DFT": (mondeq, True), "monDEQ, FFTs (before)": (mondeq, False), "explicit CNN": (explicit_cnn, True)}


def _config(epochs: int) -> TrainConfig:
    settings = {k: v for k, v in RECIPES[RECIPE].settings.items() if k not in ("out", "model_options", "time_budget")}
    return TrainConfig(**{**settings, "epochs": epochs, "time_budget": None})


def _loss(logits, x, y, epoch):
    return F.cross_entropy(logits, y, label_smoothing=RECIPES[RECIPE].settings["label_smoothing"])


def _transforms(matrix_dft: bool):
    """The spectral maps' transform for models built and trained inside: matrix products or FFTs."""
    return mock.patch.object(fourier, "MATRIX_DFT_MAX_SIDE", fourier.MATRIX_DFT_MAX_SIDE if matrix_dft else 0)


def profile_steps(build, matrix_dft: bool, train, steps: int) -> dict:
    """Milliseconds per step and per category over ``steps`` steps after one warm-up epoch."""
    torch.manual_seed(0)
    with _transforms(matrix_dft):
        model = build()
        warm = train.subset(min(len(train), 128 * steps))
        train_for(model, _config(1), warm, _loss)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            train_for(model, _config(1), warm, _loss)
            wall = time.perf_counter() - start
    shares: dict[str, float] = {}
    optimiser = 0.0
    for event in prof.key_averages():
        if event.key.startswith("Optimizer.step"):
            optimiser += event.cpu_time_total / 1e3
        elif event.key.startswith("aten::"):
            key = category(event.key)
            shares[key] = shares.get(key, 0.0) + event.self_cpu_time_total / 1e3
    batches = -(-len(warm) // 128)
    per_step = {k: v / batches for k, v in shares.items()}
    accounted = sum(per_step.values())
    per_step["Python and dispatch"] = max(0.0, 1e3 * wall / batches - accounted)
    return {"ms_per_step": 1e3 * wall / batches, "categories": per_step, "optimiser_ms": optimiser / batches}


def epoch_seconds(build, matrix_dft: bool, train) -> float:
    """The second epoch's training seconds on ``train`` (the first fills the fixed-point store)."""
    torch.manual_seed(0)
    with _transforms(matrix_dft):
        timed = train_for(build(), _config(2), train, _loss, marks=2, probe=lambda model: 0.0)
    (first, _), (both, _) = timed.points
    return both - first


def run(tiny: bool = False) -> dict:
    train, _ = data(tiny)
    train = train.subset(min(len(train), 256 if tiny else IMAGES))
    models = _models(tiny)
    steps = 2 if tiny else PROFILED
    profiles = {name: profile_steps(build, matrix_dft, train, steps) for name, (build, matrix_dft) in models.items()}
    epochs: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(1 if tiny else 2):  # alternated: a drift of the machine's speed hits every model alike
        for name, (build, matrix_dft) in models.items():
            epochs[name].append(epoch_seconds(build, matrix_dft, train))
    return {"images": len(train), "profiled_steps": steps, "profiles": profiles, "epoch_seconds": epochs}


def markdown(result: dict) -> str:
    names = list(result["profiles"])
    cnn = min(result["epoch_seconds"]["explicit CNN"])
    cpu = result.get("_machine", {}).get("cpu", "unknown CPU")
    lines = [
        f"Measured on {cpu}. Fashion-MNIST, the first {result['images']:,} training images, batch 128; the `{RECIPE}` recipe's "
        f"settings. A category's milliseconds per step (its share of the step) over {result['profiled_steps']} profiled "
        "steps after a warm-up epoch; the epoch ratio from the fastest of two second epochs of each, timed in turn.",
        "",
    ]
    header = ["", *names]
    epoch_row = ["**epoch (s), against the CNN**"]
    for name in names:
        seconds = min(result["epoch_seconds"][name])
        epoch_row.append(f"**{seconds:.2f} s ({seconds / cnn:.2f}x)**")
    step_row = ["step (profiled)", *[f"{result['profiles'][n]['ms_per_step']:.1f} ms" for n in names]]
    keys = [*CATEGORIES, "other operators", "Python and dispatch"]
    rows = [epoch_row, step_row]
    for key in keys:
        cells = []
        for name in names:
            profile_ = result["profiles"][name]
            ms = profile_["categories"].get(key, 0.0)
            cells.append(f"{ms:.1f} ms ({100 * ms / profile_['ms_per_step']:.0f}%)")
        rows.append([key, *cells])
    rows.append(["of all these, the optimiser step", *[f"{result['profiles'][n]['optimiser_ms']:.1f} ms" for n in names]])
    lines += markdown_table(header, rows)
    return "\n".join(lines)


SECTION = Section(title="14. Where a training step's time goes", order=15, run=run, markdown=markdown)
