"""Training and evaluation of monDEQ classifiers: the code path behind ``mondeq train``.

Adam (AdamW with a weight decay) with the paper's learning-rate schedules (step decay, or
one-cycle with the inverse momentum cycle), optional label smoothing, the paper's step-size
tuning (at batch 30 and half-way through each epoch, halve alpha while the forward iterations
do not grow, keep the best), evaluation every epoch or every few (always at the end),
a CSV log (and TensorBoard when installed), and checkpoints that resume bit-for-bit: the batch
order and augmentation depend only on ``(seed, epoch)``, and a checkpoint records the
position inside an epoch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .checkpoint import CheckpointError, load_attachment, load_checkpoint, require, save_checkpoint
from .data import DATASET_NAMES, Batches, ImageDataset, dataset_info, load_dataset
from .devices import resolve_device
from .errors import ConfigError, DivergenceError, first_line, ignore_convergence_warnings
from .files import RunLock, check_writable, output_dir, write_atomic
from .models import (
    MODEL_KINDS,
    EntryPointConfig,
    ModelConfig,
    build_model,
    is_entry_point,
    model_config_from_dict,
    model_options,
    option_applies,
    preset_config,
)
from .reuse import FixedPointStore

__all__ = [
    "RECIPES",
    "RESUMABLE_OPTIONS",
    "Recipe",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "RunningTotals",
    "evaluate",
    "learning_rate",
    "make_optimizer",
    "tune_alpha",
]

#: Options that may differ from a run's stored configuration when it is resumed.
RESUMABLE_OPTIONS = ("epochs", "threads", "data_dir", "device", "checkpoint_every", "time_budget", "eval_every", "strict")

#: Epoch cap of a run given a time budget and no epoch count.
BUDGET_EPOCHS = 1000

#: Training steps in a row with a solve at its iteration cap after which a run is called stalled
#: (said once on stderr; an error with ``strict``). An epoch of fewer steps stalls when all are capped.
STALL_STEPS = 20

#: What fixed-point reuse keeps (``TrainConfig.reuse``).
REUSE_MODES = ("off", "forward", "both")

#: The checkpoint attachment that holds the fixed-point store.
FIXED_POINTS = "fixed-points"

#: What a training run writes into its folder: ``--overwrite`` removes these before a new run.
RUN_OUTPUTS = ("checkpoint.json", "checkpoint*.safetensors", "metrics.csv", "certify.json", "plots", "tensorboard")

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
    "elapsed_seconds",
    "capped_steps",
]


@dataclass
class TrainConfig:
    """Options of ``mondeq train`` (``None`` means: the preset's value)."""

    dataset: str = "fashion-mnist"
    model: str = "single-conv"
    epochs: int | None = None  # 1, or BUDGET_EPOCHS with a time budget
    batch_size: int = 128
    test_batch_size: int = 128  # 2.4x the throughput of 400 for single-conv (docs/benchmarks.md, section 9)
    lr: float = 1e-3
    lr_schedule: str = "step"  # step | one-cycle | constant
    lr_step: int = 10
    #: Decoupled (AdamW-style) weight decay of the weight matrices and kernels (tensors of two or
    #: more dimensions; biases and scales are not decayed). 0: plain Adam.
    weight_decay: float = 0.0
    #: Label smoothing of the training loss (the test loss stays the plain cross-entropy).
    label_smoothing: float = 0.0
    #: Evaluate on the test set every this many epochs; 0: only at the end. The run's last epoch,
    #: and a time-budgeted run's final (fractional) epoch, are always evaluated.
    eval_every: int = 1
    tune_alpha: bool = True
    max_alpha: float = 1.0
    #: Stop with an error when the solver has been at its iteration cap for :data:`STALL_STEPS`
    #: training steps in a row (a diverging run), instead of saying so and going on.
    strict: bool = False
    #: Fixed-point reuse (:mod:`mondeq.reuse`): each training example's solves start from where its
    #: last visit ended: ``off``, ``forward`` (the equilibrium) or ``both`` (and the backward solve).
    reuse: str = "off"
    #: Memory cap of the fixed-point store, in GB (examples beyond it start cold).
    reuse_memory: float = 4.0
    augment: bool | None = None
    seed: int = 0
    out: str = "runs/default"
    data_dir: str | None = None
    device: str = "cpu"
    threads: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    checkpoint_every: float = 10.0  # minutes between mid-epoch checkpoints (0: only at epoch ends)
    #: Minutes of wall time for the whole run, evaluations included: training stops between two
    #: batches early enough for a last evaluation, which is recorded and saved (None: no limit).
    time_budget: float | None = None
    recipe: str | None = None  # the name of the recipe the options came from (a record only)
    #: Overrides of the preset's :class:`~mondeq.models.ModelConfig` (``width``, ``channels``, ``m``, ...).
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs is None:
            self.epochs = BUDGET_EPOCHS if self.time_budget is not None else 1
        if self.dataset not in DATASET_NAMES:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {DATASET_NAMES}")
        if self.model not in MODEL_KINDS and not is_entry_point(self.model):
            raise ConfigError(f"unknown model {self.model!r}; choose one of {list(MODEL_KINDS)} or a 'package.module:function'")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}; choose one of {sorted(RECIPES)}")
        if self.lr_schedule not in ("step", "one-cycle", "constant"):
            raise ConfigError(f"lr_schedule must be step, one-cycle or constant, got {self.lr_schedule!r}")
        if self.reuse not in REUSE_MODES:
            raise ConfigError(f"reuse must be one of {', '.join(REUSE_MODES)}, got {self.reuse!r}")
        _check_number("reuse_memory", self.reuse_memory, positive=True)
        for name in ("epochs", "batch_size", "test_batch_size", "lr_step", "threads", "train_limit", "test_limit"):
            _check_number(name, getattr(self, name), minimum=1, integer=True)
        for name in ("lr", "max_alpha"):
            _check_number(name, getattr(self, name), positive=True)
        _check_number("seed", self.seed, minimum=0, integer=True)
        if self.seed >= 2**64:
            raise ConfigError(f"seed must be < 2**64, got {self.seed}")
        if not str(self.out).strip():
            raise ConfigError("out (the run folder) must not be empty")
        defaults = {f.name: f.default for f in fields(self)}
        if not self.tune_alpha and self.max_alpha != defaults["max_alpha"]:
            raise ConfigError("max_alpha bounds the tuned step size; it does nothing with tune_alpha off (--no-tune-alpha)")
        if self.lr_schedule != "step" and self.lr_step != defaults["lr_step"]:
            raise ConfigError(f"lr_step sets the step schedule's decay; it does nothing with lr_schedule {self.lr_schedule!r}")
        _check_number("checkpoint_every", self.checkpoint_every, minimum=0)
        _check_number("weight_decay", self.weight_decay, minimum=0)
        _check_number("eval_every", self.eval_every, minimum=0, integer=True)
        _check_number("label_smoothing", self.label_smoothing, minimum=0)
        if self.label_smoothing >= 1:
            raise ConfigError(f"label_smoothing must be < 1, got {self.label_smoothing!r}")
        _check_number("time_budget", self.time_budget, positive=True)
        self.model_options = {k: v for k, v in self.model_options.items() if v is not None}
        self.model_config()  # validates the model options

    def model_config(self) -> ModelConfig | EntryPointConfig:
        info = dataset_info(self.dataset, self.data_dir)
        if is_entry_point(self.model):
            if self.model_options:
                raise ConfigError(
                    f"model options ({', '.join(sorted(self.model_options))}) size the presets; "
                    f"the entry point {self.model!r} builds its own model"
                )
            return EntryPointConfig(self.model, info.channels, info.image_size, len(info.classes))
        return preset_config(self.model, self.dataset, info.channels, info.image_size, len(info.classes), **self.model_options)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """A configuration from a checkpoint's ``train`` entry (also one written before
        ``model_options``, whose overrides were fields of their own)."""
        known = {f.name for f in fields(cls)}
        options = {f.name for f in model_options()}
        legacy = {k: v for k, v in data.items() if k in options and v is not None}
        config = {k: v for k, v in data.items() if k in known}
        config["model_options"] = {**legacy, **config.get("model_options", {})}
        return cls(**config)


def _check_number(name: str, value, minimum: float | None = None, positive: bool = False, integer: bool = False) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is ``None`` or a finite number within bounds."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ConfigError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if positive and not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class Recipe:
    """A named set of :class:`TrainConfig` options (``model_options`` among them) that was measured.

    Attributes:
        summary: one line for ``mondeq train --help``.
        settings: the options; explicit ones given with the recipe override them.
        measured: where its result is recorded.
    """

    summary: str
    settings: dict[str, Any]
    measured: str = "docs/results.md"

    def options(self, explicit: dict[str, Any]) -> dict[str, Any]:
        """The recipe's options updated by ``explicit`` ones (model options merged key by key). When
        ``explicit`` names another model, the recipe's model options that mean nothing for it are
        dropped (all of them for a model entry point)."""
        kind = explicit.get("model", self.settings.get("model"))
        recipe_sizes = {
            name: value
            for name, value in self.settings.get("model_options", {}).items()
            if not is_entry_point(kind) and option_applies(name, kind)
        }
        model = {**recipe_sizes, **explicit.get("model_options", {})}
        return {**self.settings, **explicit, "model_options": model}


#: Recipes for ``mondeq train --recipe NAME``.
RECIPES: dict[str, Recipe] = {
    "fmnist-hour": Recipe(
        summary="Fashion-MNIST in one hour on 2 CPU cores (single-conv at 14x14, 60 channels, ~95k parameters)",
        settings={
            "dataset": "fashion-mnist",
            "model": "single-conv",
            "time_budget": 59.0,  # the whole command, start-up included, within the hour
            "lr": 4e-3,  # 91.33% in the hour at m = 1; 2e-3 gave 90.69% (docs/results.md)
            "lr_schedule": "one-cycle",
            "augment": False,  # crop + flip slowed learning: 84.8% at 25 minutes against 85.9% after one epoch without
            "label_smoothing": 0.1,  # with weight decay: 92.00% in the hour at m = 0.5, tol 3e-2; 91.76% without both
            "weight_decay": 0.05,
            "eval_every": 3,  # evaluating every epoch costs about 3 of the 59 minutes
            "out": "runs/fmnist-hour",
            # m = 0.5 (I - W >= I/2): 91.76% against 91.33% at the paper's m = 1; tol 3e-2: 14.4 epochs in the hour, not 12.2
            "model_options": {"channels": [60], "stride": 2, "pool": 2, "m": 0.5, "tol": 3e-2},
        },
    ),
}


@dataclass
class RunningTotals:
    """Sums over the batches of the current epoch (this process's share), stored in checkpoints by name."""

    loss: float = 0.0
    correct: float = 0.0
    examples: float = 0.0
    forward_iterations: float = 0.0
    backward_iterations: float = 0.0
    forward_seconds: float = 0.0
    backward_seconds: float = 0.0
    capped_steps: float = 0.0  # steps with a solve stopped at its iteration cap

    def add(self, **values: float) -> None:
        for key, value in values.items():
            setattr(self, key, getattr(self, key) + value)

    def summed_over_ranks(self) -> RunningTotals:
        totals = torch.tensor(list(asdict(self).values()), dtype=torch.float64)
        return RunningTotals(*distributed.all_reduce_sum(totals).tolist())

    @classmethod
    def from_checkpoint(cls, stored: dict | list) -> RunningTotals:
        """From a checkpoint's ``running`` entry: named fields (those added later default to 0), or
        the 7-element list of older checkpoints."""
        if isinstance(stored, list):
            if len(stored) != 7:
                raise ValueError(f"running totals have {len(stored)} entries, expected 7")
            return cls(*map(float, stored))
        return cls(**{k: float(v) for k, v in stored.items()})


def learning_rate(config: TrainConfig, t: float, progress: float | None = None) -> tuple[float, float | None]:
    """``(lr, beta1)`` at fractional epoch ``t``; ``beta1`` is ``None`` unless one-cycle.

    One-cycle (as in the paper's CIFAR runs): lr rises linearly from ``lr/10`` to ``lr`` over the
    first half of the cycle, falls back over the second, then decays linearly to ``lr/100``; Adam's
    ``beta1`` moves inversely between 0.95 and 0.85. ``progress`` is the fraction of the run
    done (default ``t / epochs``; the fraction of the time budget for a budgeted run). The cycle
    spans ``epochs - 5`` epochs for long runs and 80% of the run for short and budgeted ones.
    """
    if config.lr_schedule == "constant":
        return config.lr, None
    if config.lr_schedule == "step":
        return config.lr * 0.1 ** math.floor(t / config.lr_step), None
    total = config.epochs
    progress = t / total if progress is None else progress
    cycle = (total - 5) / total if total > 10 and config.time_budget is None else 0.8
    points = [0.0, cycle / 2, cycle, 1.0]
    low = config.lr / 10
    lr = float(np.interp(progress, points, [low, config.lr, low, low / 10]))
    beta1 = float(np.interp(progress, points, [0.95, 0.85, 0.95, 0.95]))
    return lr, beta1


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam at ``config.lr``; with ``config.weight_decay`` the decoupled decay (AdamW) of the
    tensors of two or more dimensions (weights and kernels), in a group of their own."""
    if not config.weight_decay:
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    decayed = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=config.lr, decoupled_weight_decay=True)


@torch.no_grad()
def tune_alpha(model: nn.Module, x: torch.Tensor, max_alpha: float) -> float:
    """Pick the step size with the fewest forward iterations on batch ``x`` (the paper's search).

    Tries ``max_alpha, max_alpha/2, ...`` until the iteration count grows; keeps the current alpha
    if none converged. Forward-backward keeps its own bound and is not tuned. The model runs in
    evaluation mode (a user model's batch norm statistics and dropout stay untouched).
    """
    layer = model.layer
    if not layer.method.needs_resolvent:
        return layer.alpha
    original, training = layer.alpha, model.training
    best_alpha, best_iters = original, math.inf
    alpha, previous = max_alpha, math.inf
    model.eval()
    try:
        while alpha > 1e-4:
            layer.alpha = alpha
            model(x)
            stats = layer.stats
            iters = stats.forward.iterations if stats.forward.converged else math.inf
            if iters < best_iters:
                best_alpha, best_iters = alpha, iters
            if iters > previous:
                break
            previous = iters
            alpha /= 2
    finally:
        model.train(training)
    layer.alpha = best_alpha if best_iters < math.inf else original
    return layer.alpha


class TrainingInterrupted(Exception):
    """Training stopped between two batches on SIGINT or SIGTERM; the checkpoint holds the position.

    Attributes:
        signal: the signal number that asked for the stop.
    """

    def __init__(self, signum: int) -> None:
        self.signal = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class _StopRequests:
    """While active, SIGINT and SIGTERM only record that a stop was asked for.

    The training loop honours the request between batches, so a step, the position in the
    epoch and the running totals always change together. A second SIGINT raises
    ``KeyboardInterrupt`` at once (the last checkpoint on disk stays intact).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        if self.announce:
            print(
                f"\n{signal.Signals(signum).name}: saving a checkpoint after this batch (Ctrl-C again to stop without saving)",
                file=sys.stderr,
                flush=True,
            )

    def requested(self) -> bool:
        """Whether any rank was asked to stop (every rank gets the same answer)."""
        return distributed.any_rank(self.signum is not None)


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    forward_iterations: float
    seconds: float
    examples: int


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    batch_size: int,
    device: str | torch.device = "cpu",
    stop: Callable[[], bool] | None = None,
) -> EvalResult | None:
    """Loss, accuracy and mean forward iterations over ``dataset`` (summed across ranks).

    ``stop`` is asked between batches; when it answers true the evaluation is abandoned and
    ``None`` returned.
    """
    model.eval()
    start = time.perf_counter()
    totals = torch.zeros(4, dtype=torch.float64)  # loss, correct, iterations, batches
    shard = Batches(dataset, batch_size, rank=distributed.rank(), world_size=distributed.world_size(), pad=False, device=device)
    for x, y in shard:
        if stop is not None and stop():
            return None
        logits = model(x)
        totals += torch.tensor(
            [
                F.cross_entropy(logits, y, reduction="sum").item(),
                (logits.argmax(1) == y).sum().item(),
                model.layer.stats.forward.iterations,
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


class Trainer:
    """Runs ``config`` to completion, writing checkpoints, ``metrics.csv`` and TensorBoard logs to ``config.out``.

    Nothing is lost to an interruption: SIGINT and SIGTERM stop the loop between two batches
    (or during the epoch's evaluation) and save a checkpoint of that exact position, then
    :meth:`fit` raises :class:`TrainingInterrupted`; a checkpoint is also written every
    ``config.checkpoint_every`` minutes, so even ``kill -9`` loses at most that much work.
    Resuming reproduces an uninterrupted run bit for bit.

    With ``config.time_budget`` the run ends when the budget is spent: training stops between
    two batches early enough for a last evaluation (its expected time is held back), which is
    recorded as a fractional epoch and saved; one-cycle then spans the budget. A budgeted run's
    learning rate follows the clock, so it is not bit-reproducible; resuming it with a larger
    ``time_budget`` continues from the exact position, with the schedule stretched over the new
    budget (one-cycle's learning rate rises again).

    A run folder has one writer: the trainer holds :class:`~mondeq.files.RunLock` from its
    construction to the end of :meth:`fit` (a second trainer on the folder is refused), and a
    folder that holds a run is refused unless ``on_existing`` says ``"overwrite"`` (its outputs
    are removed first) or the run is resumed (:meth:`resume_run`). A run that diverges (a
    non-finite loss or parameter) stops with :class:`~mondeq.errors.DivergenceError` without
    saving, so its last checkpoint is the last good state; steps whose solve stopped at the
    iteration cap are counted per epoch (``capped_steps``), and with ``config.strict`` a solver
    at its cap for :data:`STALL_STEPS` steps in a row stops the run the same way.
    """

    #: The clock of the time budget and of periodic checkpoints (seconds; replaceable in tests).
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(
        self,
        config: TrainConfig,
        train_set: ImageDataset | None = None,
        test_set: ImageDataset | None = None,
        progress: bool = True,
        on_existing: str = "refuse",
    ) -> None:
        if on_existing not in ("refuse", "overwrite", "resume"):
            raise ValueError(f"on_existing must be refuse, overwrite or resume, got {on_existing!r}")
        self.config = config
        self.device = resolve_device(config.device)
        self.out = Path(config.out)
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.train_set = (train_set or load_dataset(config.dataset, "train", config.data_dir)).subset(config.train_limit)
        self.test_set = (test_set or load_dataset(config.dataset, "test", config.data_dir)).subset(config.test_limit)
        try:
            self.model = build_model(config.model_config()).to(self.device)
            self.model.layer.linear.check_step_size(self.model.layer.alpha)  # before an epoch, not after
            self.model.layer.linear.check_margin()
        except (ValueError, TypeError) as error:
            raise ConfigError(f"model {config.model!r} cannot be built as asked: {first_line(error)}") from error
        self.optimizer = make_optimizer(self.model, config)
        self.fixed_points: FixedPointStore | None = None
        if config.reuse != "off":
            self.fixed_points = FixedPointStore(
                len(self.train_set),
                self.model.layer.linear.features,
                backward=config.reuse == "both",
                max_bytes=int(config.reuse_memory * 1e9),
                device=self.device,
            )
            self.model.layer.fixed_points = self.fixed_points
        self.epoch, self.batch = 0, 0
        self.running = RunningTotals()
        self.progress = progress and distributed.is_main()
        self.history: list[dict[str, float]] = []
        self.wrapped = distributed.wrap(self.model)
        self._last_save = self.clock()
        self.elapsed = 0.0  # seconds of this run before the current fit() call
        self._clock_start: float | None = None
        self._evaluation_seconds: float | None = None
        #: The time budget (minutes) the run last ran out of: it stays stopped until given a larger one,
        #: even when its next evaluation would be quicker than the last (the reserve it stopped for).
        self.budget_spent: float | None = None
        self._capped_streak = 0  # training steps in a row with a solve at its iteration cap
        self._saved: tuple[int, int] | None = None  # (epoch, batch) of the last checkpoint this trainer wrote
        self._lock = RunLock(self.out)
        self._created_out = False
        if distributed.is_main():
            self._claim_folder(on_existing)

    # -- the run folder -------------------------------------------------------------------
    def _claim_folder(self, on_existing: str) -> None:
        """Create the run folder (proving it writable), take its lock, and refuse a folder that
        holds a run unless it is resumed or ``on_existing == "overwrite"`` (then clear it)."""
        self._created_out = not self.out.exists()
        check_writable(self.out)
        for name in ("checkpoint.json", "metrics.csv"):
            if (self.out / name).is_dir():
                raise ConfigError(f"{self.out / name} is a folder; mondeq writes a file there (move the folder away)")
        self._lock.acquire()
        holds_run = (self.out / "checkpoint.json").exists()  # written before anything else of a run
        if holds_run and on_existing == "refuse":
            self._lock.release()
            raise ConfigError(
                f"{self.out} already holds a run; continue it with `mondeq train --resume {self.out}`, "
                "or replace it with --overwrite (or choose another --out)"
            )
        if holds_run and on_existing == "overwrite":
            for pattern in RUN_OUTPUTS:
                for path in self.out.glob(pattern):
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

    def _release_folder(self, failed: bool) -> None:
        """Release the lock; after a failure before anything was saved, remove the folder this
        trainer created (a failing command leaves nothing behind)."""
        self._lock.release()
        if failed and self._created_out and self._saved is None and distributed.is_main():
            shutil.rmtree(self.out, ignore_errors=True)

    @classmethod
    def resume_run(cls, run: str | Path, options: dict[str, Any] | None = None, progress: bool = True, **datasets) -> Trainer:
        """A trainer that continues the run in folder ``run`` with its stored configuration.

        ``options`` may change only :data:`RESUMABLE_OPTIONS`; any other option whose value
        differs from the stored one is refused with a ``ValueError`` naming it.
        """
        run = Path(run)
        checkpoint = load_checkpoint(run)
        meta = checkpoint[0]
        require(meta, "train", "model", where=f"checkpoint {run}")
        stored = dict(meta["train"], out=str(run if run.is_dir() else run.parent))
        options = {k: v for k, v in (options or {}).items() if v is not None}
        model_changes = options.pop("model_options", {})
        changed = sorted(k for k, v in options.items() if k not in RESUMABLE_OPTIONS and stored.get(k) != v)
        changed += sorted(k for k, v in model_changes.items() if v is not None and meta["model"].get(k) != v)
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise ConfigError(
                f"{flags} would change the stored run {run}; a resumed run keeps its options "
                f"(only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE_OPTIONS)} may change)"
            )
        stored.update({k: v for k, v in options.items() if k in RESUMABLE_OPTIONS})
        try:
            config = TrainConfig.from_dict(stored)
        except TypeError as error:
            raise CheckpointError(f"checkpoint {run} holds an invalid training configuration: {error}") from error
        trainer = cls(config, progress=progress, on_existing="resume", **datasets)
        trainer.resume(run, checkpoint)
        return trainer

    # -- checkpoints ----------------------------------------------------------------------
    def save(self) -> Path | None:
        self._last_save = self.clock()
        if not distributed.is_main():
            return None
        self._saved = (self.epoch, self.batch)
        meta = {
            "model": self.model.config.to_dict(),
            "train": asdict(self.config),
            "data": self.train_set.info.to_dict(),  # classes and normalisation, for predict
            "epoch": self.epoch,
            "batch": self.batch,
            "world_size": distributed.world_size(),
            "alpha": self.model.layer.alpha,
            "running": asdict(self.running),
            "history": self.history,
            "elapsed": self.elapsed_seconds(),
            "budget_spent": self.budget_spent,
            "evaluation_seconds": self._evaluation_seconds,
        }
        # The fixed points of one process: those of a distributed run's other ranks are not here.
        keep = self.fixed_points is not None and distributed.world_size() == 1
        attachments = {FIXED_POINTS: self.fixed_points.state_dict()} if keep else None
        return save_checkpoint(self.out / "checkpoint", self.model, self.optimizer, meta, attachments)

    def resume(self, path: str | Path | None = None, checkpoint: tuple | None = None) -> None:
        """Continue from a checkpoint (default: the one in ``config.out``); ``checkpoint`` is what
        :func:`~mondeq.checkpoint.load_checkpoint` already read from ``path``, when it was."""
        path = path or self.out
        meta, state, optimizer_state = checkpoint or load_checkpoint(path)
        require(meta, "model", "alpha", "epoch", "batch", "running", "history", where=f"checkpoint {path}")
        try:  # through the config class: fields added since the checkpoint was written take their defaults
            stored = model_config_from_dict(meta["model"]).to_dict()
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"checkpoint {path} describes an invalid model: {first_line(error)}") from error
        if stored != self.model.config.to_dict():
            raise CheckpointError(f"checkpoint model {stored} differs from the requested model {self.model.config.to_dict()}")
        try:
            self.model.load_state_dict(state)
            if optimizer_state is not None:
                self.optimizer.load_state_dict(optimizer_state)
            running = RunningTotals.from_checkpoint(meta["running"])
            epoch, batch = int(meta["epoch"]), int(meta["batch"])
            self.model.layer.alpha = meta["alpha"]
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            raise CheckpointError(f"cannot resume from checkpoint {path}: {first_line(error)}") from error
        self.epoch, self.batch, self.running = epoch, batch, running
        self._saved = (epoch, batch)
        saved_world = meta.get("world_size", 1)
        if self.batch and saved_world != distributed.world_size():
            # Mid-epoch with another number of processes: skip as many examples as were seen.
            self.batch = math.ceil(self.batch * saved_world / distributed.world_size())
        if self.batch > len(self._batches()):
            raise CheckpointError(f"checkpoint {path}: batch {batch} is beyond the {len(self._batches())} batches of an epoch")
        self.history = meta["history"]
        self._resume_fixed_points(path)
        self.elapsed = float(meta.get("elapsed", 0.0))
        self.budget_spent = meta.get("budget_spent")
        self._evaluation_seconds = meta.get("evaluation_seconds")
        self._last_save = self.clock()

    def _resume_fixed_points(self, path: str | Path) -> None:
        """Refill the fixed-point store from the checkpoint; it stays cold (every example's next solve
        starts at zero, the run continues to tolerance rather than bit for bit) when the checkpoint
        has none (a distributed run, or a crash that lost the unflushed file)."""
        if self.fixed_points is None:
            return
        state = load_attachment(path, FIXED_POINTS, self.device)
        try:
            if state is None:
                raise ValueError("no stored fixed points")
            self.fixed_points.load_state_dict(state)
        except ValueError as reason:
            self.fixed_points.clear()
            if distributed.is_main():
                print(f"mondeq train: {reason} in {path}: every example starts cold once", file=sys.stderr, flush=True)
            return
        for direction, rows in self.fixed_points.rows.items():  # a damaged file must not start a solve from NaN
            self.fixed_points.visited[direction] &= torch.isfinite(rows).all(dim=1)

    # -- time -----------------------------------------------------------------------------
    def elapsed_seconds(self) -> float:
        """Wall time this run has spent so far, across resumptions."""
        return self.elapsed if self._clock_start is None else self.clock() - self._clock_start

    def out_of_time(self) -> bool:
        """Whether the time budget leaves no room for another batch and the final evaluation
        (every rank gets the same answer)."""
        if self.config.time_budget is None:
            return False
        if self.budget_spent is not None and self.budget_spent >= self.config.time_budget:
            return True
        reserve = self._evaluation_seconds
        if reserve is None:  # no evaluation yet: from the forward solves' time per training image
            r = self.running
            reserve = 1.5 * r.forward_seconds / r.examples * len(self.test_set) if r.examples else 0.0
        return distributed.any_rank(self.elapsed_seconds() + reserve >= 60 * self.config.time_budget)

    def _progress(self, index: int, num_batches: int) -> float:
        """The fraction of the run done: of the time budget, or of the epochs."""
        if self.config.time_budget is None:
            return (self.epoch + index / num_batches) / self.config.epochs
        spent = min(1.0, self.elapsed_seconds() / (60 * self.config.time_budget))
        return distributed.broadcast_float(spent)

    # -- loop -----------------------------------------------------------------------------
    def fit(self, stop_after_batches: int | None = None) -> list[dict[str, float]]:
        """Train until ``config.epochs`` or until the time budget is spent.

        Raises :class:`TrainingInterrupted` after saving when SIGINT or SIGTERM arrives.
        ``stop_after_batches`` stops (after saving, without raising) once that many batches ran
        in this call, to simulate an interruption.
        """
        self._batches_left = math.inf if stop_after_batches is None else stop_after_batches
        if distributed.is_main():
            self._lock.acquire()
            if self.fixed_points is not None:
                print(f"mondeq train: {self.fixed_points.describe()}", file=sys.stderr, flush=True)
        self._clock_start = self.clock() - self.elapsed
        writer = self._tensorboard()
        failed = True
        try:
            # Solves stopped at their cap are counted per epoch (capped_steps) instead of warned about per step.
            with _StopRequests(announce=distributed.is_main()) as stops, ignore_convergence_warnings():
                while self.epoch < self.config.epochs:
                    if self.out_of_time():  # at an epoch's end: nothing left to train
                        self._refuse_untrained_budget()
                        self._spend_budget(stops)
                        break
                    start = time.perf_counter()
                    stopped, num_batches = self._train_epoch(stops)
                    if stopped == "batches":
                        self.save()
                        return self.history
                    if stopped == "time" and self.batch == 0:  # out of time before this epoch's first batch
                        self._spend_budget(stops)
                        break
                    if stopped == "time":
                        self.budget_spent = self.config.time_budget  # saved with the row below
                    row = self._end_epoch(num_batches, time.perf_counter() - start, stops, complete=stopped is None)
                    for key, value in row.items() if writer is not None else ():
                        if value is not None:
                            writer.add_scalar(key, value, row["epoch"])
            failed = False
        except TrainingInterrupted:
            failed = False  # saved
            raise
        except DivergenceError as error:
            raise DivergenceError(f"{error}; {self._last_checkpoint()}") from error
        finally:
            self.elapsed, self._clock_start = self.elapsed_seconds(), None
            if writer is not None:
                writer.close()
            self._release_folder(failed)
        return self.history

    def _last_checkpoint(self) -> str:
        """Where the last checkpoint of this run stands, in words."""
        if self._saved is None:
            return "nothing was saved"
        epoch, batch = self._saved
        where = f"after epoch {epoch}" if batch == 0 else f"at batch {batch} of epoch {epoch + 1}"
        return f"the last checkpoint ({where}) is kept in {self.out}"

    def _refuse_untrained_budget(self) -> None:
        """A :class:`~mondeq.errors.ConfigError` when the time budget ran out before the run's first batch."""
        if self.history or self.epoch or self.batch:
            return
        raise ConfigError(
            f"the time budget ({60 * self.config.time_budget:.3g} s) ran out before the first training batch; "
            "nothing was trained: give a longer --time-budget"
        )

    def _spend_budget(self, stops: _StopRequests) -> None:
        """Record (and save, once) that the run is out of its time budget between epochs, unless
        already recorded; the last epoch is evaluated first if it was not (``eval_every`` skipped
        it), so that a run always ends with its test accuracy."""
        evaluated = self._evaluate_last_row(stops)
        if evaluated or self.budget_spent != self.config.time_budget:
            self.budget_spent = self.config.time_budget
            self.save()
        if evaluated and distributed.is_main():
            self._write_csv()
            last = self.history[-1]
            print(f"epoch {last['epoch']}: test loss {last['test_loss']:.4f} acc {last['test_accuracy']:.4f}", flush=True)

    def _train_epoch(self, stops: _StopRequests) -> tuple[str | None, int]:
        """Train the rest of the current epoch.

        Returns why it stopped early (``"batches"``: ``stop_after_batches`` ran out, ``"time"``:
        the time budget; ``None``: the epoch is complete) and the epoch's batch count.
        """
        batches = self._batches()
        bar = self._bar(len(batches))
        try:
            for index, (x, y) in enumerate(batches):
                if index < self.batch:
                    continue
                if self._batches_left <= 0:
                    return "batches", len(batches)
                self._between_batches(stops)
                if self.out_of_time():
                    self._refuse_untrained_budget()
                    return "time", len(batches)
                self._train_step(x, y, index, len(batches), batches.indices(index))
                self.batch = index + 1
                self._batches_left -= 1
                self._show(bar)
        finally:
            if bar is not None:
                bar.close()
        self._between_batches(stops)
        return None, len(batches)

    def _batches(self) -> Batches:
        return self._batches_of(self.epoch)

    def _batches_of(self, epoch: int) -> Batches:
        cfg = self.config
        return Batches(
            self.train_set,
            cfg.batch_size,
            shuffle=True,
            augment=self.train_set.info.augment if cfg.augment is None else cfg.augment,
            seed=cfg.seed,
            epoch=epoch,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
            device=self.device,
        )

    def _between_batches(self, stops: _StopRequests) -> None:
        """Honour a stop request, or write the periodic checkpoint when it is due."""
        if stops.requested():
            self.save()
            raise TrainingInterrupted(stops.signum or signal.SIGTERM)
        every = self.config.checkpoint_every
        if every and self.clock() - self._last_save >= 60 * every:
            self.save()

    def _show(self, bar) -> None:
        if bar is None:
            return
        r = self.running
        bar.update(1)
        bar.set_postfix(
            loss=f"{r.loss / r.examples:.3f}",
            acc=f"{r.correct / r.examples:.3f}",
            fwd=f"{r.forward_iterations / max(self.batch, 1):.1f}",
            bwd=f"{r.backward_iterations / max(self.batch, 1):.1f}",
            alpha=f"{self.model.layer.alpha:g}",
        )

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, index: int, num_batches: int, examples: torch.Tensor) -> None:
        cfg = self.config
        model = self.model
        if cfg.tune_alpha and index in (30, num_batches // 2):
            model.layer.alpha = distributed.broadcast_float(tune_alpha(model, x, cfg.max_alpha))
        model.train()
        lr, beta1 = learning_rate(cfg, self.epoch + index / num_batches, self._progress(index, num_batches))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if beta1 is not None:
                group["betas"] = (beta1, group["betas"][1])
        self.optimizer.zero_grad(set_to_none=True)
        reuse = self.fixed_points.select(examples) if self.fixed_points is not None else contextlib.nullcontext()
        with reuse:  # this forward and its backward start from the examples' last fixed points
            logits = self.wrapped(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            loss_value = loss.item()
            where = f"epoch {self.epoch + 1}, batch {index + 1}"
            distributed.check_finite(loss_value, f"the training loss of {where}")
            loss.backward()
        self.optimizer.step()
        distributed.check_finite(self._parameters_finite(), f"a parameter after the update of {where}")
        stats = model.layer.stats
        capped = not stats.forward.converged or (stats.backward is not None and not stats.backward.converged)
        self.running.add(
            loss=loss_value * len(y),
            correct=(logits.argmax(1) == y).sum().item(),
            examples=len(y),
            forward_iterations=stats.forward.iterations,
            backward_iterations=stats.backward.iterations if stats.backward else 0,
            forward_seconds=stats.forward.seconds,
            backward_seconds=stats.backward.seconds if stats.backward else 0.0,
            capped_steps=float(capped),
        )
        self._watch_stall(capped, num_batches)

    def _parameters_finite(self) -> float:
        """0 when every parameter is finite, NaN otherwise (one host synchronisation)."""
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        return 0.0 if bool(finite) else math.nan

    def _watch_stall(self, capped: bool, num_batches: int) -> None:
        """Count steps in a row at the iteration cap; at :data:`STALL_STEPS` (or a whole epoch of
        fewer steps) say once that the run is stalling, or stop it with ``strict``."""
        self._capped_streak = self._capped_streak + 1 if capped else 0
        if self._capped_streak != min(STALL_STEPS, num_batches):
            return
        layer = self.model.layer
        message = (
            f"the solver has stopped at its iteration cap ({layer.forward_options.max_iter}) in {self._capped_streak} "
            f"training steps in a row (epoch {self.epoch + 1}): the run is diverging or the tolerance "
            f"({layer.forward_options.tol:g}) is out of reach; a smaller --lr or a larger --max-iter helps"
        )
        if self.config.strict:
            raise DivergenceError(f"training stopped (--strict): {message}")
        if distributed.is_main():
            print(f"\nmondeq train: warning: {message} (--strict stops such a run)", file=sys.stderr, flush=True)

    def _end_epoch(self, num_batches: int, seconds: float, stops: _StopRequests, complete: bool = True) -> dict[str, float]:
        """Evaluate, then advance epoch, position, totals and history together and save.

        An incomplete epoch (the time budget ran out) is recorded as a fractional epoch and
        leaves the position inside it, so that a resumed run with more time continues there.
        """
        cfg = self.config
        totals = self.running.summed_over_ranks()
        evaluation = self._evaluate(stops) if self._evaluation_due(complete) else None
        batches = max(num_batches if complete else self.batch, 1) * distributed.world_size()
        row = {
            "epoch": self.epoch + 1 if complete else round(self.epoch + self.batch / num_batches, 3),
            "train_loss": totals.loss / totals.examples,
            "train_accuracy": totals.correct / totals.examples,
            "test_loss": None if evaluation is None else evaluation.loss,
            "test_accuracy": None if evaluation is None else evaluation.accuracy,
            "forward_iterations": totals.forward_iterations / batches,
            "backward_iterations": totals.backward_iterations / batches,
            "forward_seconds": totals.forward_seconds / batches,
            "backward_seconds": totals.backward_seconds / batches,
            "epoch_seconds": seconds,
            "alpha": self.model.layer.alpha,
            "lr": self.optimizer.param_groups[0]["lr"],
            "elapsed_seconds": self.elapsed_seconds(),
            "capped_steps": int(totals.capped_steps),
        }
        if complete:
            self.history, self.epoch, self.batch = [*self.history, row], self.epoch + 1, 0
            self.running = RunningTotals()
        else:
            self.history = [*self.history, row]
        self.save()
        if distributed.is_main():
            self._write_csv()
            of = f"/{cfg.epochs}" if cfg.time_budget is None else f" (time budget {cfg.time_budget:.4g} min)"
            test = "not evaluated" if evaluation is None else f"test loss {evaluation.loss:.4f} acc {evaluation.accuracy:.4f}"
            capped = row["capped_steps"]
            at_cap = f" ({capped} of {batches} steps stopped at the iteration cap)" if capped else ""
            print(
                f"epoch {row['epoch']}{of}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
                f"{test} | fwd {row['forward_iterations']:.1f} bwd {row['backward_iterations']:.1f} iters{at_cap} | "
                f"{seconds:.1f}s, {row['elapsed_seconds'] / 60:.1f} min in all",
                flush=True,
            )
        return row

    def _evaluation_due(self, complete: bool) -> bool:
        """Whether the epoch ending now is evaluated: every ``eval_every`` epochs, and always the
        last one (the epoch count reached, or the time budget spent)."""
        every, ended = self.config.eval_every, self.epoch + 1
        return not complete or ended >= self.config.epochs or self.out_of_time() or (every > 0 and ended % every == 0)

    def _evaluate(self, stops: _StopRequests) -> EvalResult:
        """The test set's loss and accuracy; a stop request during it saves and raises (the
        position stays "all batches of the epoch done")."""
        evaluation = evaluate(self.model, self.test_set, self.config.test_batch_size, self.device, stop=stops.requested)
        if evaluation is None:
            self.save()
            raise TrainingInterrupted(stops.signum or signal.SIGTERM)
        self._evaluation_seconds = evaluation.seconds
        distributed.check_finite(evaluation.loss, f"the test loss after epoch {self.epoch + 1}")
        return evaluation

    def _evaluate_last_row(self, stops: _StopRequests) -> bool:
        """Fill in the test loss and accuracy of the last recorded epoch if it was not evaluated;
        whether it did."""
        if not self.history or self.history[-1]["test_accuracy"] is not None:
            return False
        evaluation = self._evaluate(stops)
        last = {**self.history[-1], "test_loss": evaluation.loss, "test_accuracy": evaluation.accuracy}
        self.history = [*self.history[:-1], last]
        return True

    def _write_csv(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(self.history)
        write_atomic(self.out / "metrics.csv", text.getvalue())

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
        return SummaryWriter(str(output_dir(self.out / "tensorboard")))
