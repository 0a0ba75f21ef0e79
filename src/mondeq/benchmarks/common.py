"""Shared helpers: machine facts, timing, the paper-sized problems, data for the benchmarks."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import plot
from ..data import DATASETS, Batches, ImageDataset, load_dataset
from ..errors import DataError, ignore_convergence_warnings
from ..models import ModelConfig, MonDEQClassifier, load_model, preset_config
from ..train import TrainConfig, make_optimizer, tunes_alpha
from ..train.averaging import WeightAverage, parse_average
from ..train.step import Objective, reuse_store, train_step

KINDS = ("fc", "single-conv", "multi-conv")
pyplot = plot.pyplot


def machine_info() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def source_commit() -> str | None:
    """The git commit of the mondeq source that runs (short hash), ``None`` outside a git checkout."""
    try:
        found = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (found.stdout.strip() or None) if found.returncode == 0 else None


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (PNG, atomically) and close a matplotlib figure."""
    fig.tight_layout()
    return plot.save_figure(fig, path, dpi=110)


def measure(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure_pair(
    first: Callable[[], object], second: Callable[[], object], repeat: int = 5, min_seconds: float = 2.0, warmup: int = 1
) -> tuple[float, float, float]:
    """``(median time of first, median time of second, median of the pairwise ratios second / first)``,
    timed alternately, so that a drift of the machine's speed reaches both sides alike: at least
    ``repeat`` pairs, more until both sides have run ``min_seconds`` (at most 1,000 pairs)."""
    for _ in range(warmup):
        first()
        second()
    times: list[tuple[float, float]] = []
    spent = 0.0
    while len(times) < repeat or (spent < min_seconds and len(times) < 1000):
        pair = []
        for fn in (first, second):
            start = time.perf_counter()
            fn()
            pair.append(time.perf_counter() - start)
        times.append((pair[0], pair[1]))
        spent += pair[0] + pair[1]
    return (
        statistics.median(a for a, _ in times),
        statistics.median(b for _, b in times),
        statistics.median(b / a for a, b in times),
    )


@dataclass
class Scale:
    """Problem sizes: the paper's (``full``) or a toy one for smoke tests (``tiny``)."""

    batch: int
    image_size: int
    fc_width: int
    single_channels: int
    multi_channels: tuple[int, ...]
    tiny: bool

    @classmethod
    def get(cls, tiny: bool) -> Scale:
        if tiny:
            return cls(batch=8, image_size=8, fc_width=16, single_channels=4, multi_channels=(2, 3), tiny=True)
        return cls(batch=128, image_size=28, fc_width=87, single_channels=54, multi_channels=(16, 32, 32), tiny=False)

    def config(self, kind: str, **overrides) -> ModelConfig:
        sizes = {"fc": {"width": self.fc_width}, "single-conv": {"channels": [self.single_channels]}}
        sizes["multi-conv"] = {"channels": list(self.multi_channels)}
        config = preset_config(kind, "fashion-mnist", 1, 28, 10, **sizes[kind], **overrides)
        config.image_size = self.image_size
        return config


def model_at(scale: Scale, kind: str, trained: bool = False, seed: int = 0, runs: Path = Path("runs")) -> MonDEQClassifier | None:
    """A classifier at initialisation, or the one-epoch Fashion-MNIST model from ``runs/`` (None if absent)."""
    if trained:
        if scale.tiny:
            return None
        path = runs / f"fashion-mnist-{kind}"
        if not (path / "checkpoint.json").is_file():
            return None
        model = load_model(path)[0]
        return model if isinstance(model, MonDEQClassifier) else None  # a user's model of the same name
    torch.manual_seed(seed)
    return MonDEQClassifier(scale.config(kind))


def batch(scale: Scale, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A test batch of Fashion-MNIST when available (random images otherwise, and at toy scale)."""
    if not scale.tiny:
        try:
            test = load_dataset("fashion-mnist", "test")
            generator = torch.Generator().manual_seed(seed)
            index = torch.randperm(len(test), generator=generator)[: scale.batch]
            return test.normalize(test.images[index]), test.labels[index]
        except DataError:
            pass
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(scale.batch, 1, scale.image_size, scale.image_size, generator=generator)
    return x, torch.randint(0, 10, (scale.batch,), generator=generator)


def synthetic_images(size: int = 28, count: int = 64) -> ImageDataset:
    """``count`` random ``size x size`` images with random labels, shaped like Fashion-MNIST (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (count, 1, size, size), generator=generator, dtype=torch.uint8)
    return ImageDataset(images, torch.randint(0, 10, (count,), generator=generator), DATASETS["fashion-mnist"])


@dataclass
class TimedTraining:
    """What :func:`train_for` did: ``(seconds, probe value)`` at each mark, the epochs begun and the
    training seconds spent."""

    points: list[tuple[float, float]] = field(default_factory=list)
    epochs: int = 0
    seconds: float = 0.0


def train_for(
    model: nn.Module,
    config: TrainConfig,
    train: ImageDataset,
    loss: Objective,
    marks: int = 1,
    probe: Callable[[nn.Module], float] | None = None,
) -> TimedTraining:
    """Train ``model`` on ``loss`` (an :data:`~mondeq.train.step.Objective`) for ``config.time_budget``
    minutes of training time, or without a budget for ``config.epochs`` epochs, with the step of
    ``mondeq train`` (:func:`~mondeq.train.step.train_step`): its optimiser, the learning rate against the
    fraction of the run done (of the budget, or of the epochs) and, for a monDEQ, its step-size tuning
    and fixed-point store (:func:`~mondeq.train.step.reuse_store`).

    With ``config.average`` the probe measures the averaged weights (once they average a step).
    Training time counts the steps only: ``probe(model)``, called at ``marks`` evenly spaced fractions
    of the run (the last at its end), and the batching are not counted.
    """
    budget = None if config.time_budget is None else 60 * config.time_budget
    optimizer = make_optimizer(model, config)
    is_mondeq = isinstance(model, MonDEQClassifier)
    spec = parse_average(config.average)
    average = WeightAverage(model, spec) if spec is not None else None
    store = reuse_store(config, model, len(train)) if is_mondeq else None
    if store is not None:
        model.layer.fixed_points = store
    done = TimedTraining()
    due = [(k + 1) / marks for k in range(marks)]

    def fraction(epoch: float) -> float:
        """Of the run done: the budget's share spent, or the epochs' share."""
        return min(1.0, done.seconds / budget if budget is not None else epoch / config.epochs)

    while due:
        augment = config.augmentation(train.info)
        batches = Batches(train, config.batch_size, shuffle=True, augment=augment, seed=config.seed, epoch=done.epochs)
        done.epochs += 1
        for index, (x, y) in enumerate(batches):
            start = time.perf_counter()
            epoch = done.epochs - 1 + index / len(batches)
            with ignore_convergence_warnings():
                train_step(
                    model,
                    optimizer,
                    config,
                    x,
                    y,
                    loss,
                    epoch,
                    fraction(epoch),
                    tune=is_mondeq and tunes_alpha(config, index, len(batches)),
                    store=store,
                    examples=batches.indices(index),
                )
            if average is not None:
                average.update(model, fraction(epoch + 1 / len(batches)))
            done.seconds += time.perf_counter() - start
            if fraction(epoch + 1 / len(batches)) >= due[0] - 1e-9:
                due.pop(0)
                if probe is not None:
                    done.points.append((done.seconds, probe(average.evaluated(model) if average is not None else model)))
                if not due:
                    break
    return done
