"""Training and evaluation of monDEQ classifiers: the code path behind ``mondeq train``.

Adam with the paper's learning-rate schedules (step decay, or one-cycle with the inverse
momentum cycle), the paper's step-size tuning (at batch 30 and half-way through each epoch,
halve alpha while the forward iterations do not grow, keep the best), per-epoch evaluation,
a CSV log (and TensorBoard when installed), and checkpoints that resume bit-for-bit: the batch
order and augmentation depend only on ``(seed, epoch)``, and a checkpoint records the
position inside an epoch.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import DATASETS, Batches, ImageDataset, load_dataset
from .models import ModelConfig, MonDEQClassifier, preset_config

__all__ = ["TrainConfig", "Trainer", "evaluate", "load_model", "tune_alpha", "learning_rate"]

METRIC_FIELDS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "forward_iterations",
    "backward_iterations",
    "forward_seconds",
    "backward_seconds",
    "epoch_seconds",
    "alpha",
    "lr",
]


@dataclass
class TrainConfig:
    """Options of ``mondeq train`` (``None`` means: the preset's value)."""

    dataset: str = "fashion-mnist"
    model: str = "single-conv"
    epochs: int = 1
    batch_size: int = 128
    test_batch_size: int = 400
    lr: float = 1e-3
    lr_schedule: str = "step"  # step | one-cycle | constant
    lr_step: int = 10
    tune_alpha: bool = True
    max_alpha: float = 1.0
    augment: bool | None = None
    seed: int = 0
    out: str = "runs/default"
    data_dir: str | None = None
    device: str = "cpu"
    threads: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    # model overrides
    width: int | None = None
    channels: list[int] | None = None
    m: float | None = None
    activation: str | None = None
    solver: str | None = None
    alpha: float | None = None
    tol: float | None = None
    max_iter: int | None = None
    anderson: int | None = None
    input_norm: float | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {sorted(DATASETS)}")
        if self.lr_schedule not in ("step", "one-cycle", "constant"):
            raise ValueError(f"lr_schedule must be step, one-cycle or constant, got {self.lr_schedule!r}")
        for name in ("epochs", "batch_size", "test_batch_size", "lr_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def model_config(self) -> ModelConfig:
        info = DATASETS[self.dataset]
        overrides = {k: getattr(self, k) for k in ("width", "channels", "m", "activation", "solver", "alpha", "tol")}
        overrides.update(max_iter=self.max_iter, anderson=self.anderson, input_norm=self.input_norm)
        return preset_config(self.model, self.dataset, info.channels, info.image_size, len(info.classes), **overrides)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def learning_rate(config: TrainConfig, t: float) -> tuple[float, float | None]:
    """``(lr, beta1)`` at fractional epoch ``t``; ``beta1`` is ``None`` unless one-cycle.

    One-cycle (as in the paper's CIFAR runs): lr rises linearly from ``lr/10`` to ``lr`` over the
    first half of the cycle, falls back over the second, then stays at ``lr/10``; Adam's
    ``beta1`` moves inversely between 0.95 and 0.85. The cycle spans ``epochs - 5`` epochs for
    long runs and 80% of the run for short ones.
    """
    if config.lr_schedule == "constant":
        return config.lr, None
    if config.lr_schedule == "step":
        return config.lr * 0.1 ** math.floor(t / config.lr_step), None
    total = config.epochs
    cycle = total - 5 if total > 10 else 0.8 * total
    points = [0.0, cycle / 2, cycle, total]
    low = config.lr / 10
    lr = float(np.interp(t, points, [low, config.lr, low, low]))
    beta1 = float(np.interp(t, points, [0.95, 0.85, 0.95, 0.95]))
    return lr, beta1


@torch.no_grad()
def tune_alpha(model: MonDEQClassifier, x: torch.Tensor, max_alpha: float) -> float:
    """Pick the step size with the fewest forward iterations on batch ``x`` (the paper's search).

    Tries ``max_alpha, max_alpha/2, ...`` until the iteration count grows; keeps the current alpha
    if none converged. Forward-backward keeps its own bound and is not tuned.
    """
    layer = model.layer
    if not layer.method.needs_resolvent:
        return layer.alpha
    original = layer.alpha
    best_alpha, best_iters = original, math.inf
    alpha, previous = max_alpha, math.inf
    while alpha > 1e-4:
        layer.alpha = alpha
        model(x)
        stats = layer.stats
        iters = stats.forward_iterations if stats.forward_converged else math.inf
        if iters < best_iters:
            best_alpha, best_iters = alpha, iters
        if iters > previous:
            break
        previous = iters
        alpha /= 2
    layer.alpha = best_alpha if best_iters < math.inf else original
    return layer.alpha


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    forward_iterations: float
    seconds: float
    examples: int


@torch.no_grad()
def evaluate(model: MonDEQClassifier, dataset: ImageDataset, batch_size: int, device: str | torch.device = "cpu") -> EvalResult:
    """Loss, accuracy and mean forward iterations over ``dataset`` (summed across ranks)."""
    model.eval()
    start = time.perf_counter()
    totals = torch.zeros(4, dtype=torch.float64)  # loss, correct, iterations, batches
    shard = Batches(dataset, batch_size, rank=distributed.rank(), world_size=distributed.world_size(), pad=False, device=device)
    for x, y in shard:
        logits = model(x)
        totals += torch.tensor(
            [
                F.cross_entropy(logits, y, reduction="sum").item(),
                (logits.argmax(1) == y).sum().item(),
                model.layer.stats.forward_iterations,
                1,
            ],
            dtype=torch.float64,
        )
    totals = distributed.all_reduce_sum(totals)
    n = len(dataset)
    return EvalResult(
        loss=totals[0].item() / n,
        accuracy=totals[1].item() / n,
        forward_iterations=totals[2].item() / max(totals[3].item(), 1),
        seconds=time.perf_counter() - start,
        examples=n,
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MonDEQClassifier, dict[str, Any]]:
    """A classifier and its checkpoint metadata."""
    meta, state, _ = load_checkpoint(path)
    try:
        model = MonDEQClassifier(ModelConfig.from_dict(meta["model"]))
        model.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path} does not describe a valid model: {error}") from error
    model.layer.alpha = meta.get("alpha", model.layer.alpha)
    return model.to(device), meta


class Trainer:
    """Runs ``config`` to completion, writing checkpoints, ``metrics.csv`` and TensorBoard logs to ``config.out``."""

    def __init__(
        self,
        config: TrainConfig,
        train_set: ImageDataset | None = None,
        test_set: ImageDataset | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.device = torch.device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.train_set = (train_set or load_dataset(config.dataset, "train", config.data_dir)).subset(config.train_limit)
        self.test_set = (test_set or load_dataset(config.dataset, "test", config.data_dir)).subset(config.test_limit)
        self.model = MonDEQClassifier(config.model_config()).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.out = Path(config.out)
        self.epoch, self.batch = 0, 0
        self.running = torch.zeros(7, dtype=torch.float64)  # loss, correct, n, fwd it, bwd it, fwd s, bwd s
        self.progress = progress and distributed.is_main()
        self.history: list[dict[str, float]] = []
        self.wrapped = distributed.wrap(self.model)

    # -- checkpoints ----------------------------------------------------------------------
    def save(self) -> Path | None:
        if not distributed.is_main():
            return None
        meta = {
            "model": self.model.config.to_dict(),
            "train": asdict(self.config),
            "epoch": self.epoch,
            "batch": self.batch,
            "world_size": distributed.world_size(),
            "alpha": self.model.layer.alpha,
            "running": self.running.tolist(),
            "history": self.history,
        }
        return save_checkpoint(self.out / "checkpoint", self.model, self.optimizer, meta)

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from a checkpoint (default: the one in ``config.out``)."""
        meta, state, optimizer_state = load_checkpoint(path or self.out)
        if meta["model"] != self.model.config.to_dict():
            raise CheckpointError(
                f"checkpoint model {meta['model']} differs from the requested model {self.model.config.to_dict()}"
            )
        self.model.load_state_dict(state)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        self.model.layer.alpha = meta["alpha"]
        self.epoch, self.batch = meta["epoch"], meta["batch"]
        saved_world = meta.get("world_size", 1)
        if self.batch and saved_world != distributed.world_size():
            # Mid-epoch with another number of processes: skip as many examples as were seen.
            self.batch = math.ceil(self.batch * saved_world / distributed.world_size())
        self.running = torch.tensor(meta["running"], dtype=torch.float64)
        self.history = meta["history"]

    # -- loop -----------------------------------------------------------------------------
    def fit(self, stop_after_batches: int | None = None) -> list[dict[str, float]]:
        """Train until ``config.epochs``; Ctrl-C saves a checkpoint and re-raises.

        ``stop_after_batches`` stops (after saving) once that many batches ran in this call, to
        simulate an interruption.
        """
        cfg = self.config
        ran = 0
        writer = self._tensorboard()
        try:
            while self.epoch < cfg.epochs:
                augment = DATASETS[cfg.dataset].augment if cfg.augment is None else cfg.augment
                batches = Batches(
                    self.train_set,
                    cfg.batch_size,
                    shuffle=True,
                    augment=augment,
                    seed=cfg.seed,
                    epoch=self.epoch,
                    rank=distributed.rank(),
                    world_size=distributed.world_size(),
                    device=self.device,
                )
                epoch_start = time.perf_counter()
                bar = self._bar(len(batches))
                for index, (x, y) in enumerate(batches):
                    if index < self.batch:
                        continue
                    if stop_after_batches is not None and ran >= stop_after_batches:
                        self.save()
                        return self.history
                    self._train_step(x, y, index, len(batches))
                    self.batch = index + 1
                    ran += 1
                    if bar is not None:
                        r = self.running
                        bar.update(1)
                        bar.set_postfix(
                            loss=f"{r[0] / r[2]:.3f}",
                            acc=f"{r[1] / r[2]:.3f}",
                            fwd=f"{r[3] / max(self.batch, 1):.1f}",
                            bwd=f"{r[4] / max(self.batch, 1):.1f}",
                            alpha=f"{self.model.layer.alpha:g}",
                        )
                if bar is not None:
                    bar.close()
                row = self._end_epoch(len(batches), time.perf_counter() - epoch_start)
                if writer is not None:
                    for key, value in row.items():
                        writer.add_scalar(key, value, row["epoch"])
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            if writer is not None:
                writer.close()
        return self.history

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, index: int, num_batches: int) -> None:
        cfg = self.config
        model = self.model
        if cfg.tune_alpha and index in (30, num_batches // 2):
            model.layer.alpha = distributed.broadcast_float(tune_alpha(model, x, cfg.max_alpha))
        model.train()
        lr, beta1 = learning_rate(cfg, self.epoch + index / num_batches)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if beta1 is not None:
                group["betas"] = (beta1, group["betas"][1])
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.wrapped(x)
        loss = F.cross_entropy(logits, y)
        distributed.check_finite(loss, f"epoch {self.epoch} batch {index}")
        loss.backward()
        self.optimizer.step()
        stats = model.layer.stats
        self.running += torch.tensor(
            [
                loss.item() * len(y),
                (logits.argmax(1) == y).sum().item(),
                len(y),
                stats.forward_iterations,
                stats.backward_iterations or 0,
                stats.forward_seconds,
                stats.backward_seconds or 0.0,
            ],
            dtype=torch.float64,
        )

    def _end_epoch(self, num_batches: int, seconds: float) -> dict[str, float]:
        cfg = self.config
        totals = distributed.all_reduce_sum(self.running.clone())
        evaluation = evaluate(self.model, self.test_set, cfg.test_batch_size, self.device)
        batches = num_batches * distributed.world_size()
        row = {
            "epoch": self.epoch + 1,
            "train_loss": totals[0].item() / totals[2].item(),
            "train_accuracy": totals[1].item() / totals[2].item(),
            "test_loss": evaluation.loss,
            "test_accuracy": evaluation.accuracy,
            "forward_iterations": totals[3].item() / batches,
            "backward_iterations": totals[4].item() / batches,
            "forward_seconds": totals[5].item() / batches,
            "backward_seconds": totals[6].item() / batches,
            "epoch_seconds": seconds,
            "alpha": self.model.layer.alpha,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        self.history.append(row)
        self.epoch += 1
        self.batch = 0
        self.running.zero_()
        if distributed.is_main():
            self._write_csv()
            print(
                f"epoch {row['epoch']}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
                f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f} | fwd {row['forward_iterations']:.1f} "
                f"bwd {row['backward_iterations']:.1f} iters | {seconds:.1f}s",
                flush=True,
            )
        self.save()
        return row

    def _write_csv(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(self.history)

    def _bar(self, total: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.batch, desc=f"epoch {self.epoch + 1}/{self.config.epochs}", unit="batch")

    def _tensorboard(self):
        if not distributed.is_main():
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.out / "tensorboard"))
