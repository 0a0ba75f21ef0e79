"""What a checkpoint of a run holds, and how a run comes back from one.

A checkpoint holds the configuration, the model and optimiser tensors, the position inside the
epoch with the epoch's running totals, alpha, the history, the time budget's state and, for an
interruption, the fixed-point store (an attachment that a crash may lose). Resuming reproduces an
uninterrupted run bit for bit on the same machine; with fixed-point reuse, from the checkpoint of
an interruption (the others hold no store: the run then agrees to the solver's tolerance).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import distributed
from ..checkpoint import load_attachment, load_checkpoint, require
from ..errors import CheckpointError, ConfigError, first_line
from ..models import model_config_from_dict
from ..reuse import FixedPointStore
from .config import RESUMABLE_OPTIONS, TrainConfig
from .metrics import RunningTotals

if TYPE_CHECKING:
    from .loop import Trainer

__all__ = ["FIXED_POINTS", "checkpoint_entries", "config_to_resume", "restore"]

#: The checkpoint attachment that holds the fixed-point store.
FIXED_POINTS = "fixed-points"


def config_to_resume(run: Path, options: dict[str, Any] | None) -> tuple[TrainConfig, tuple]:
    """The stored configuration of the run in folder ``run`` with ``options`` applied, and its
    checkpoint. ``options`` may change only :data:`RESUMABLE_OPTIONS`; any other option whose value
    differs from the stored one is refused with a :class:`~mondeq.errors.ConfigError` naming it."""
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
    return config, checkpoint


def checkpoint_entries(trainer: Trainer) -> dict[str, Any]:
    """The JSON entries of a checkpoint of ``trainer``'s run at its present position."""
    return {
        "model": trainer.model.config.to_dict(),
        "train": asdict(trainer.config),
        "data": trainer.train_set.info.to_dict(),  # classes and normalisation, for predict
        "epoch": trainer.epoch,
        "batch": trainer.batch,
        "world_size": distributed.world_size(),
        "alpha": trainer.model.layer.alpha,
        "running": asdict(trainer.running),
        "history": trainer.history,
        **trainer.budget.state(),
    }


def restore(trainer: Trainer, path: str | Path, checkpoint: tuple) -> None:
    """Put ``trainer`` at the position of ``checkpoint`` (what :func:`~mondeq.checkpoint.load_checkpoint`
    read from ``path``): weights, optimiser, position, totals, alpha, history, budget, fixed points."""
    meta, state, optimizer_state = checkpoint
    require(meta, "model", "alpha", "epoch", "batch", "running", "history", where=f"checkpoint {path}")
    try:  # through the config class: fields added since the checkpoint was written take their defaults
        stored = model_config_from_dict(meta["model"]).to_dict()
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} describes an invalid model: {first_line(error)}") from error
    if stored != trainer.model.config.to_dict():
        raise CheckpointError(f"checkpoint model {stored} differs from the requested model {trainer.model.config.to_dict()}")
    try:
        trainer.model.load_state_dict(state)
        if optimizer_state is not None:
            trainer.optimizer.load_state_dict(optimizer_state)
        running = RunningTotals.from_checkpoint(meta["running"])
        epoch, batch = int(meta["epoch"]), int(meta["batch"])
        trainer.model.layer.alpha = meta["alpha"]
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"cannot resume from checkpoint {path}: {first_line(error)}") from error
    trainer.epoch, trainer.batch, trainer.running = epoch, batch, running
    trainer.folder.saved = (epoch, batch)
    saved_world = meta.get("world_size", 1)
    if trainer.batch and saved_world != distributed.world_size():
        # Mid-epoch with another number of processes: skip as many examples as were seen.
        trainer.batch = math.ceil(trainer.batch * saved_world / distributed.world_size())
    batches = len(trainer.batches(epoch))
    if trainer.batch > batches:
        raise CheckpointError(f"checkpoint {path}: batch {batch} is beyond the {batches} batches of an epoch")
    trainer.history = meta["history"]
    if trainer.fixed_points is not None:
        _restore_fixed_points(trainer.fixed_points, path, trainer.device)
    trainer.budget.load(meta)


def _restore_fixed_points(store: FixedPointStore, path: str | Path, device: torch.device) -> None:
    """Refill the fixed-point store from the checkpoint; it stays cold (every example's next solve
    starts at zero, the run continues to tolerance rather than bit for bit) when the checkpoint
    has none (a periodic or epoch-end checkpoint, a distributed run, or a crash that lost the
    unflushed file)."""
    state = load_attachment(path, FIXED_POINTS, device)
    try:
        if state is None:
            raise ValueError("no stored fixed points")
        store.load_state_dict(state)
    except ValueError as reason:
        store.clear()
        if distributed.is_main():
            print(f"mondeq train: {reason} in {path}: every example starts cold once", file=sys.stderr, flush=True)
        return
    for direction, rows in store.rows.items():  # a damaged file must not start a solve from NaN
        store.visited[direction] &= torch.isfinite(rows).all(dim=1)
