"""Checkpoints: weights and optimizer tensors in safetensors, everything else in JSON.

A checkpoint ``NAME`` is the pair ``NAME.safetensors`` / ``NAME.json``. Both are written to a
temporary file and renamed into place, the JSON last, and the JSON records the SHA-256 of the
tensors file, so a reader never sees a half-written or mismatched pair. Loading never
unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "checkpoint_paths"]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or inconsistent."""


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(tensors, json)`` paths for a checkpoint given as a run folder, stem, or either file."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint"
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
) -> Path:
    """Write model weights, optimizer state and ``meta`` (JSON-serialisable) atomically."""
    tensors_path, json_path = checkpoint_paths(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimizer_meta = None
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in state["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        optimizer_meta = {"param_groups": state["param_groups"], "scalars": scalars}
    _atomic_write(tensors_path, lambda tmp: save_file(tensors, tmp))
    document = {
        "format": FORMAT_VERSION,
        "tensors_sha256": _sha256(tensors_path),
        "optimizer": optimizer_meta,
        **meta,
    }
    _atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=2)))
    return json_path


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(meta, model_state, optimizer_state)`` of a checkpoint, verified against its hash."""
    tensors_path, json_path = checkpoint_paths(path)
    for p in (json_path, tensors_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} not found")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint metadata {json_path} is corrupt: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{json_path} is not a mondeq checkpoint (format {FORMAT_VERSION})")
    if _sha256(tensors_path) != meta.get("tensors_sha256"):
        raise CheckpointError(f"{tensors_path} does not match {json_path} (corrupt or from another checkpoint)")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint tensors {tensors_path}: {error}") from error
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = None
    if meta.get("optimizer") is not None:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in meta["optimizer"]["scalars"].items():
            state.setdefault(int(index), {}).update(values)
        optimizer_state = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
    return meta, model_state, optimizer_state
