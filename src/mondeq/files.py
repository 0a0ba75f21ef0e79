"""Writing run outputs safely: atomic replacement, durable on disk, never through a symlink.

Every file mondeq writes into a run folder (checkpoints, ``metrics.csv``, ``certify.json``,
plots) goes through :func:`write_atomic`: the bytes land in a temporary file in the same
folder, are flushed to disk, and the temporary file is renamed over the target. A reader
therefore sees the old file or the new one, never a mixture, and a symbolic link planted at
the target is replaced by a regular file instead of being written through. Folders that
mondeq creates inside a run folder are refused when they are symbolic links.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import MondeqError

__all__ = ["OutputError", "fsync_dir", "output_dir", "remove_stray_temporaries", "write_atomic", "check_writable"]

TEMPORARY_SUFFIX = ".tmp"


class OutputError(MondeqError, OSError):
    """A run folder or output file cannot be written safely."""


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def output_dir(folder: str | Path) -> Path:
    """``folder``, created if missing; an :class:`OutputError` if it is a symbolic link or not a folder."""
    folder = Path(folder)
    if folder.is_symlink():
        raise OutputError(f"{folder} is a symbolic link; refusing to write outputs through it")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_atomic(path: str | Path, data: bytes | str | Callable[[str], None]) -> Path:
    """Replace ``path`` by ``data`` (bytes, text, or a function that writes a given file name).

    The content is written to a temporary file beside ``path``, fsynced, renamed over ``path``
    and the folder fsynced, so a crash leaves either the old or the new file.
    """
    path = Path(path)
    folder = output_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            fd = os.open(tmp, os.O_RDWR)
        else:
            payload = data.encode() if isinstance(data, str) else data
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stray_temporaries(folder: Path, name: str) -> None:
    """Delete temporary files that an interrupted :func:`write_atomic` of ``folder/name*`` left behind."""
    for stray in Path(folder).glob(f".{name}*{TEMPORARY_SUFFIX}"):
        with contextlib.suppress(OSError):
            stray.unlink()


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` and prove it writable now, instead of failing after an epoch of training."""
    folder = Path(folder)
    try:
        output_dir(folder)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".mondeq-write-test.", suffix=TEMPORARY_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"cannot write to run folder {folder}: {error.strerror or error}") from error
    return folder
