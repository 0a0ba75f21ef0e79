"""The run folder: one writer, never a finished run overwritten, nothing left behind by a failure."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..checkpoint import save_checkpoint
from ..errors import ConfigError
from ..files import RunLock, check_writable

__all__ = ["ON_EXISTING", "RUN_OUTPUTS", "RunFolder"]

#: What a training run writes into its folder: ``--overwrite`` removes these before a new run.
RUN_OUTPUTS = ("checkpoint.json", "checkpoint*.safetensors", "metrics.csv", "certify.json", "plots", "tensorboard")

#: What a trainer does with a folder that already holds a run.
ON_EXISTING = ("refuse", "overwrite", "resume")


class RunFolder:
    """A run folder held by one trainer (only rank 0 of a distributed run touches it).

    :meth:`claim` creates the folder (proving it writable), takes its :class:`~mondeq.files.RunLock`
    and refuses a folder that holds a run unless it is resumed or overwritten (then its outputs
    are removed first). :meth:`release` lets the lock go; after a failure before anything was
    saved, it removes the folder it created.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock = RunLock(self.path)
        #: The outermost folder :meth:`claim` created (``runs`` of a new ``runs/fc``), or ``None``.
        self.created: Path | None = None
        #: ``(epoch, batch)`` of the last checkpoint written or resumed from (``None``: none yet).
        self.saved: tuple[int, int] | None = None

    def claim(self, on_existing: str) -> None:
        if on_existing not in ON_EXISTING:
            raise ValueError(f"on_existing must be one of {', '.join(ON_EXISTING)}, got {on_existing!r}")
        if not distributed.is_main():
            return
        missing = [folder for folder in (self.path, *self.path.parents) if not folder.exists()]
        self.created = missing[-1] if missing else None
        check_writable(self.path)
        for name in ("checkpoint.json", "metrics.csv"):
            if (self.path / name).is_dir():
                raise ConfigError(f"{self.path / name} is a folder; mondeq writes a file there (move the folder away)")
        self.lock.acquire()
        holds_run = (self.path / "checkpoint.json").exists()  # written before anything else of a run
        if holds_run and on_existing == "refuse":
            self.lock.release()
            raise ConfigError(
                f"{self.path} already holds a run; continue it with `mondeq train --resume {self.path}`, "
                "or replace it with --overwrite (or choose another --out)"
            )
        if holds_run and on_existing == "overwrite":
            for pattern in RUN_OUTPUTS:
                for path in self.path.glob(pattern):
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

    def acquire(self) -> None:
        """Hold the lock again (a trainer's later :meth:`~mondeq.train.Trainer.fit`)."""
        if distributed.is_main():
            self.lock.acquire()

    def release(self, failed: bool) -> None:
        """Release the lock; after a failure before anything was saved, remove the folder if this
        run created it, and the parents it created while they are empty (a failing command leaves
        nothing behind, and never touches what another run put there meanwhile)."""
        self.lock.release()
        if failed and self.created is not None and self.saved is None and distributed.is_main():
            shutil.rmtree(self.path, ignore_errors=True)
            for folder in self.path.parents:
                if not folder.is_relative_to(self.created):
                    break
                try:
                    folder.rmdir()
                except OSError:  # not empty: another run's folder
                    break

    def save(
        self,
        position: tuple[int, int],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        meta: dict[str, Any],
        attachments: dict[str, dict[str, torch.Tensor]] | None = None,
        average: dict[str, torch.Tensor] | None = None,
    ) -> Path | None:
        """Commit a checkpoint of ``position`` ``(epoch, batch)`` (rank 0 writes; the others return ``None``)."""
        if not distributed.is_main():
            return None
        self.saved = position
        return save_checkpoint(self.path / "checkpoint", model, optimizer, meta, attachments, average)

    def last_checkpoint(self) -> str:
        """Where the last checkpoint of this run stands, in words."""
        if self.saved is None:
            return "nothing was saved"
        epoch, batch = self.saved
        where = f"after epoch {epoch}" if batch == 0 else f"at batch {batch} of epoch {epoch + 1}"
        return f"the last checkpoint ({where}) is kept in {self.path}"
