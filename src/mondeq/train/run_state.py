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
from ..reuse import FixedPointStore
from .config import RESUMABLE_OPTIONS, TrainConfig

__all__ = ["FIXED_POINTS", "check_model", "config_to_resume", "restore_fixed_points"]

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
