"""Checkpoints: weights and optimizer tensors in safetensors, everything else in JSON.

A checkpoint ``NAME`` is the JSON file ``NAME.json`` and the tensors file it names,
``NAME-<hash>.safetensors``, whose name carries the first digits of its SHA-256. Saving writes
the new tensors file under its own name, then replaces the JSON (the single commit point),
then deletes tensors files no JSON names any more. Each file is written to a temporary file,
fsynced and renamed, so a crash at any moment leaves the previous checkpoint or the new one,
never neither. Loading reads the tensors file once, checks its hash on those bytes and never
unpickles anything (a model built by a user's entry point is rebuilt by importing and calling
it: :func:`mondeq.models.load_model`). Checkpoints written before content-addressed names (``NAME.safetensors``
beside the JSON) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import load_file as load_tensors_file
from safetensors.torch import save as serialize_tensors

from .errors import CheckpointError
from .files import fsync_dir, remove_stray_temporaries, write_atomic
from .validation import COUNT, Schema, check_entries

__all__ = [
    "FORMAT_SCHEMA",
    "WEIGHTS",
    "checkpoint_paths",
    "weights_taken",
    "load_attachment",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1
_READ_ATTEMPTS = 5  # a reader racing a writer may find the tensors it was pointed at just replaced


def _json_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint"
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".json")


def _read_meta(json_path: Path) -> dict[str, Any]:
    if not json_path.exists():
        raise CheckpointError(f"checkpoint file {json_path} not found")
    try:
        meta = json.loads(_read_regular(json_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint metadata {json_path} is corrupt: {error}") from error
    except RecursionError:
        raise CheckpointError(f"checkpoint metadata {json_path} is corrupt: nested too deeply") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{json_path} is not a mondeq checkpoint (format {FORMAT_VERSION})")
    return meta


def _tensors_path(json_path: Path, meta: dict[str, Any]) -> Path:
    name = meta.get("tensors", json_path.with_suffix(".safetensors").name)
    if not isinstance(name, str) or Path(name).name != name:
        raise CheckpointError(f"{json_path} names an invalid tensors file {name!r}")
    return json_path.with_name(name)


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(tensors, json)`` of a checkpoint given as a run folder, stem, or either file.

    The tensors file is the one the JSON names (the legacy ``NAME.safetensors`` when there is no JSON).
    """
    json_path = _json_path(path)
    try:
        return _tensors_path(json_path, _read_meta(json_path)), json_path
    except CheckpointError:
        return json_path.with_suffix(".safetensors"), json_path


def _state_tensors(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, average: dict[str, torch.Tensor] | None = None
) -> tuple[dict, dict | None]:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"average.{k}": v.detach().cpu().contiguous() for k, v in (average or {}).items()})
    if optimizer is None:
        return tensors, None
    state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
    attachments: dict[str, dict[str, torch.Tensor]] | None = None,
    average: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write model weights, optimizer state and ``meta`` (JSON-serialisable) atomically; returns the JSON path.

    ``average``: the state of averaged weights (``--average``), kept beside the model's in the same
    tensors file; ``meta["average"]`` says what they are.

    ``attachments`` maps a name (letters, digits, ``-``) to tensors that may be large and that a
    resumed run can do without (fixed points kept for reuse): each is written to
    ``NAME-<hash>-<name>.safetensors`` straight from the tensors' memory, renamed into place but
    not flushed to disk (a crash may lose it; :func:`load_attachment` then answers ``None``), and
    named in the JSON's ``attachments`` entry.
    """
    json_path = _json_path(path)
    tensors, optimizer_meta = _state_tensors(model, optimizer, average)
    payload = serialize_tensors(tensors)
    digest = hashlib.sha256(payload).hexdigest()
    stem = json_path.with_suffix("").name
    tensors_path = json_path.with_name(f"{stem}-{digest[:16]}.safetensors")
    write_atomic(tensors_path, payload)
    named = {}
    for name, values in (attachments or {}).items():
        if not re.fullmatch(r"[a-z0-9-]+", name):
            raise ValueError(f"attachment names are lower-case letters, digits and '-', got {name!r}")
        named[name] = _write_attachment(json_path.with_name(f"{stem}-{digest[:16]}-{name}.safetensors"), values).name
    document = {"format": FORMAT_VERSION, "tensors": tensors_path.name, "tensors_sha256": digest}
    document.update(optimizer=optimizer_meta, **meta, **({"attachments": named} if named else {}))
    write_atomic(json_path, json.dumps(document, indent=2))  # the commit point
    ours = re.compile(re.escape(stem) + r"(-[0-9a-f]{16})?(-[a-z0-9-]+)?\.safetensors")  # legacy, tensors, attachments
    keep = {tensors_path.name, *named.values()}
    for old in json_path.parent.glob(f"{stem}*.safetensors"):
        if old.name not in keep and ours.fullmatch(old.name):
            old.unlink()
    remove_stray_temporaries(json_path.parent, stem)
    return json_path


_SAFETENSORS_DTYPES = {
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int64: "I64",
}


def _write_attachment(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A safetensors file written from the tensors' own memory (no serialised copy of gigabytes), to a
    temporary file renamed into place; not fsynced: an attachment is advisory."""
    cpu = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    header, offset = {}, 0
    for name, t in cpu.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    temporary = path.with_name(f".{path.name}.attachment.tmp")
    with open(temporary, "wb") as file:
        file.write(struct.pack("<Q", len(text)) + text)
        for t in cpu.values():
            if t.numel():
                file.write(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
    os.replace(temporary, path)
    fsync_dir(path.parent)
    return path


def load_attachment(path: str | Path, name: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor] | None:
    """The tensors of the checkpoint's attachment ``name``, or ``None`` when it has none or its file
    is missing or unreadable (lost in a crash: attachments are not flushed to disk)."""
    json_path = _json_path(path)
    file = _read_meta(json_path).get("attachments", {}).get(name)
    if not isinstance(file, str) or Path(file).name != file:
        return None
    try:
        _read_tensors_file_header(json_path.with_name(file))
        return load_tensors_file(str(json_path.with_name(file)), device=str(device))
    except (OSError, CheckpointError, SafetensorError, ValueError):
        return None


def _read_consistent(json_path: Path) -> tuple[dict[str, Any], Path, bytes]:
    """The metadata, and the bytes of the tensors file it names, read once and checked against its hash."""
    for attempt in range(_READ_ATTEMPTS):
        meta = _read_meta(json_path)
        tensors_path = _tensors_path(json_path, meta)
        try:
            payload = _read_tensors_file(tensors_path)
        except (FileNotFoundError, CheckpointError) as error:
            if attempt + 1 < _READ_ATTEMPTS and _read_meta(json_path) != meta:
                continue  # a writer committed a newer checkpoint and removed these tensors: read again
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint file {tensors_path} not found") from None
        if hashlib.sha256(payload).hexdigest() == meta.get("tensors_sha256"):
            return meta, tensors_path, payload
        if attempt + 1 < _READ_ATTEMPTS and _read_meta(json_path) != meta:
            continue
        raise CheckpointError(f"{tensors_path} does not match {json_path} (corrupt or from another checkpoint)")
    raise CheckpointError(f"{json_path} keeps changing while being read")


def _read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (a symbolic link is followed); a folder, device or pipe
    is refused before it is read, as is a file larger than ``limit`` bytes."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} not found") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from error
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a regular file")
    if limit is not None and info.st_size > limit:
        raise CheckpointError(f"{path} has {info.st_size} bytes, more than its header describes ({limit})")
    try:
        with open(path, "rb") as file:
            return file.read() if limit is None else file.read(limit + 1)
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from error


def _read_tensors_file(path: Path) -> bytes:
    """A safetensors file, read only after its size is checked against the one its header states
    (8 bytes of header length, the JSON header, then the data its offsets cover)."""
    return _read_regular(path, limit=_read_tensors_file_header(path))


def _read_tensors_file_header(path: Path) -> int:
    """The size of a regular safetensors file, checked against the size its header states."""
    info = os.stat(path)  # FileNotFoundError: the caller may retry
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a regular file")
    size = info.st_size
    with open(path, "rb") as file:
        first = file.read(8)
        length = struct.unpack("<Q", first)[0] if len(first) == 8 else -1
        if not 0 <= length <= size - 8:
            raise CheckpointError(f"{path} is truncated or not a safetensors file")
        try:
            header = json.loads(file.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as error:
            raise CheckpointError(f"{path} has a corrupt safetensors header") from error
    if size != 8 + length + end:
        raise CheckpointError(f"{path} has {size} bytes, its header describes {8 + length + end} (truncated or corrupt)")
    return size


# -- the entries of the format ------------------------------------------------------------------
#: What the entries every reader of a checkpoint relies on must be. The others belong to what wrote them
#: and are checked by it where they are read (the training run's position, totals, history and budget:
#: :mod:`mondeq.train`; the data set: :class:`~mondeq.data.DatasetInfo`).
FORMAT_SCHEMA: Schema = {
    "model": (lambda v: isinstance(v, dict), "an object"),
    "train": (lambda v: isinstance(v, dict), "an object"),
    "attachments": (
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(f, str) for k, f in v.items()),
        "an object of file names",
    ),
    # which of the two weight groups load_checkpoint returns depends on it
    "average": (
        lambda v: isinstance(v, dict) and isinstance(v.get("spec"), str) and COUNT.accepts(v.get("updates")),
        "an object with the average's spec and its number of updates",
    ),
}


#: Which weights :func:`load_checkpoint` returns: the trained ones, or their average when the checkpoint
#: holds one that averages at least one step (else the trained ones; :func:`weights_taken` tells).
WEIGHTS = ("model", "average")


def weights_taken(meta: dict[str, Any], weights: str) -> str:
    """The weights :func:`load_checkpoint` returns when asked for ``weights`` from the checkpoint whose
    JSON is ``meta``: ``"average"`` when asked for and it holds an average of at least one step
    (``--average``), else ``"model"``."""
    average = meta.get("average")
    averaged = isinstance(average, dict) and COUNT.accepts(average.get("updates")) and average["updates"] > 0
    return "average" if weights == "average" and averaged else "model"


def load_checkpoint(
    path: str | Path, weights: str = "model"
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(meta, model_state, optimizer_state)`` of a checkpoint, verified against its hash.

    ``weights="average"``: ``model_state`` holds the averaged weights when the checkpoint has them
    (:func:`weights_taken`).

    Raises :class:`CheckpointError` when files are missing, corrupt, mismatched, or hold
    non-finite weights.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    json_path = _json_path(path)
    meta, tensors_path, payload = _read_consistent(json_path)
    check_entries(meta, FORMAT_SCHEMA, where=f"checkpoint {json_path}")
    try:
        tensors = load_tensors(payload)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint tensors {tensors_path}: {error}") from error
    group = weights_taken(meta, weights) + "."
    model_state = {k[len(group) :]: v for k, v in tensors.items() if k.startswith(group)}
    for name, value in model_state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"checkpoint {json_path} holds NaN or Inf values in weight {name!r}")
    optimizer_state = None
    try:
        if meta.get("optimizer") is not None:
            state: dict[int, dict[str, Any]] = {}
            for key, value in tensors.items():
                if key.startswith("optimizer."):
                    _, index, name = key.split(".", 2)
                    state.setdefault(int(index), {})[name] = value
            for index, values in meta["optimizer"]["scalars"].items():
                state.setdefault(int(index), {}).update(values)
            optimizer_state = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"checkpoint {json_path} has malformed optimizer state: {error!r}") from error
    return meta, model_state, optimizer_state


def require(meta: dict[str, Any], *keys: str, where: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first of ``keys`` missing from ``meta``."""
    for key in keys:
        if key not in meta:
            raise CheckpointError(f"{where} lacks the entry {key!r} (written by another program or damaged)")
