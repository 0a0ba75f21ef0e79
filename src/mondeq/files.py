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
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError

__all__ = [
    "LOCK_NAME",
    "RunLock",
    "check_output_file",
    "check_writable",
    "fsync_dir",
    "output_dir",
    "remove_stray_temporaries",
    "write_atomic",
]

TEMPORARY_SUFFIX = ".tmp"


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
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{path} is a folder; cannot replace it with a file")
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


def check_output_file(path: str | Path) -> Path:
    """``path`` as an output file to be written later: refused now (an :class:`OutputError`) when it
    is a folder or its folder does not exist, so that a command fails before its work and leaves
    nothing behind (no folder is created)."""
    path = Path(path)
    if str(path) in ("", "."):
        raise OutputError("the output file name is empty")
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name (such as {path / 'report.json'})")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


#: The lock file of a run folder (see :class:`RunLock`).
LOCK_NAME = ".lock"


class RunLock:
    """One writer per run folder: an advisory lock on ``FOLDER/.lock``, held from :meth:`acquire`
    to :meth:`release`.

    The operating system releases the lock when the process ends in any way (``kill -9``
    included), so a lock left by a dead process never blocks a run: no stale lock can exist. The
    file holds the owner's process id, for the error message only. Readers (``mondeq eval``,
    ``plot``, ``certify``) take no lock: a checkpoint is committed atomically, so they always
    read a consistent one while a run trains.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock; an :class:`OutputError` naming the holder's process id when another holds it."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise OutputError(f"cannot create the lock file {self.path}: {error.strerror or error}") from error
        if not _try_lock(fd):
            os.close(fd)
            holder = _read_pid(self.path)
            raise OutputError(
                f"run folder {self.path.parent} is in use by another mondeq process"
                + (f" (pid {holder})" if holder else "")
                + "; wait for it to finish, or choose another --out"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the lock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip() or "0") or None
    return None


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        """An exclusive ``flock`` without waiting: held per open file, so a second open in the
        same process is refused too (as a second trainer there must be)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True
