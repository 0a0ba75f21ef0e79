"""What a checkpoint of a run holds, and how a run comes back from one.

A checkpoint holds the configuration, the model and optimiser tensors, the position inside the
epoch with the epoch's running totals, alpha, the history, the time budget's state and, for an
interruption, the fixed-point store (an attachment that a crash may lose). Resuming reproduces an
uninterrupted run bit for bit on the same machine; with fixed-point reuse, from the checkpoint of
an interruption (the others hold no store: the run then agrees to the solver's tolerance).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_attachment, load_checkpoint, require
from ..errors import CheckpointError, ConfigError, first_line
from ..models import model_config_from_dict
from ..models.loading import ALPHA_SCHEMA
from ..reuse import FixedPointStore
from ..validation import POSITIVE_INT, Number, Schema, check_entries
from .config import RESUMABLE_OPTIONS, TrainConfig
from .metrics import MetricsLog

__all__ = [
    "FIXED_POINTS",
    "POSITION_SCHEMA",
    "check_model",
    "config_to_resume",
    "position",
    "restore_fixed_points",
    "run_position",
]

#: The checkpoint attachment that holds the fixed-point store.
FIXED_POINTS = "fixed-points"

#: What the entries of a run's position must be: the epochs done, the batches done of the next, the
#: processes that ran them, and the layer's step size then.
POSITION_SCHEMA: Schema = {
    "epoch": (Number(integer=True, low=0, high=10**7, high_open=False).accepts, "an integer in 0..10**7"),
    "batch": (Number(integer=True, low=0, high=10**9, high_open=False).accepts, "an integer in 0..10**9"),
    "world_size": (Number(integer=True, low=1, high=10**6, high_open=False).accepts, "an integer >= 1"),
    **ALPHA_SCHEMA,
}


def position(meta: dict[str, Any], where: str) -> tuple[int, int]:
    """``(epoch, batch)`` of a checkpoint, its position entries checked (:data:`POSITION_SCHEMA`), and the
    epoch within the stored run's epochs."""
    require(meta, "alpha", "epoch", "batch", where=where)
    check_entries(meta, POSITION_SCHEMA, where)
    epochs = meta.get("train", {}).get("epochs")
    if POSITIVE_INT.accepts(epochs) and meta["epoch"] > epochs:
        raise CheckpointError(f"{where}: entry 'epoch' is {meta['epoch']}, beyond the run's {epochs} epochs")
    return int(meta["epoch"]), int(meta["batch"])


def run_position(meta: dict[str, Any], where: str = "checkpoint") -> str | None:
    """A note when a checkpoint was saved inside an epoch (its weights are mid-epoch); ``None`` at an
    epoch's end. A run stopped by its time budget recorded that partial epoch in ``metrics.csv``;
    one stopped otherwise (a signal, ``kill``) has ``metrics.csv`` end at the last finished epoch.
    The entries it reads are checked (a damaged one is a :class:`~mondeq.errors.CheckpointError`)."""
    check_entries(meta, {**POSITION_SCHEMA, **MetricsLog.SCHEMA}, where)
    epoch, batch = meta.get("epoch", 0), meta.get("batch", 0)
    if not batch:
        return None
    history = meta.get("history", [])
    if history and not float(history[-1]["epoch"]).is_integer():
        return (
            f"the run ended inside epoch {epoch + 1}, after batch {batch}, when its time budget was spent; metrics.csv "
            f"ends with that partial epoch ({float(history[-1]['epoch']):g}); `mondeq train --resume` with a larger "
            "--time-budget continues it"
        )
    finished = len([row for row in history if float(row["epoch"]).is_integer()])
    return (
        f"the run stopped inside epoch {epoch + 1}, after batch {batch}: its weights are mid-epoch, "
        f"and metrics.csv holds the {finished} finished epoch(s); `mondeq train --resume` continues it"
    )


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


def check_model(meta: dict[str, Any], config: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose model is not ``config`` (a model configuration as a dict); its fields
    added since the checkpoint was written take their defaults."""
    try:
        stored = model_config_from_dict(meta["model"]).to_dict()
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} describes an invalid model: {first_line(error)}") from error
    if stored != config:
        raise CheckpointError(f"checkpoint model {stored} differs from the requested model {config}")


def restore_fixed_points(store: FixedPointStore, path: str | Path, device: torch.device, note: Callable[[str], None]) -> None:
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
        note(f"{reason} in {path}: every example starts cold once")
        return
    for direction, rows in store.rows.items():  # a damaged file must not start a solve from NaN
        store.visited[direction] &= torch.isfinite(rows).all(dim=1)
