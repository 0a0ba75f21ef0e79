"""Reading bytes of data files, for the readers."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from ..errors import DataError

__all__ = ["read_bytes", "reason"]


def read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(f"cannot read {path}: {error} (the file may be truncated or corrupt)") from error


def reason(error: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__
