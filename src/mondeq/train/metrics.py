"""What a run reports: per-epoch totals, ``metrics.csv``, TensorBoard, the epoch line and the progress bar."""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import distributed
from ..checkpoint import require
from ..errors import CheckpointError
from ..files import output_dir, write_atomic
from ..validation import FINITE, NON_NEGATIVE, Schema, check_entries

__all__ = ["METRIC_FIELDS", "MetricsLog", "RunningTotals"]

#: The columns of ``metrics.csv``, one row per epoch (a fractional epoch when a time budget ended it).
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

    #: What its checkpoint entry must be: named totals (older checkpoints: a list of the first 7).
    SCHEMA: ClassVar[Schema] = {
        "running": (
            lambda v: (
                (isinstance(v, dict) and all(isinstance(k, str) and NON_NEGATIVE.accepts(x) for k, x in v.items()))
                or (isinstance(v, list) and all(NON_NEGATIVE.accepts(x) for x in v))
            ),
            "named finite numbers >= 0",
        )
    }

    def state_dict(self) -> dict[str, Any]:
        """Its checkpoint entry: ``{"running": {total: value}}``."""
        return {"running": asdict(self)}

    def load_state_dict(self, state: dict[str, Any], where: str = "checkpoint") -> None:
        """Take the totals of ``state["running"]`` (:attr:`SCHEMA`): named ones (those added later stay 0), or
        the 7-element list of older checkpoints."""
        require(state, "running", where=where)
        check_entries(state, self.SCHEMA, where)
        stored = state["running"]
        names = [f.name for f in fields(self)]
        if isinstance(stored, list):
            if len(stored) != 7:
                raise CheckpointError(f"{where}: running totals have {len(stored)} entries, expected 7")
            stored = dict(zip(names, stored))
        unknown = set(stored) - set(names)
        if unknown:
            raise CheckpointError(f"{where}: unknown running totals {sorted(unknown)}")
        for name in names:
            setattr(self, name, float(stored.get(name, 0.0)))


def _row(value: object) -> bool:
    return (
        isinstance(value, dict)
        and NON_NEGATIVE.accepts(value.get("epoch"))
        and all(isinstance(k, str) and (v is None or FINITE.accepts(v)) for k, v in value.items())
    )


class MetricsLog:
    """The reports of a run, written by rank 0 only: ``metrics.csv``, TensorBoard scalars (when
    TensorBoard is installed), the epoch lines on stdout, notes and the progress bar on stderr."""

    #: What its checkpoint entry must be.
    SCHEMA: ClassVar[Schema] = {
        "history": (lambda v: isinstance(v, list) and all(_row(r) for r in v), "a list of rows of numbers with an epoch")
    }

    def __init__(self, out: Path, progress: bool) -> None:
        self.out = out
        self.main = distributed.is_main()
        self.progress = progress and self.main
        #: One row per evaluated (or budget-ended) epoch, the rows of ``metrics.csv``.
        self.history: list[dict[str, Any]] = []
        self._writer: Any = None

    def state_dict(self) -> dict[str, Any]:
        """Its checkpoint entry: ``{"history": rows}``."""
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any], where: str = "checkpoint") -> None:
        """Take the rows of ``state["history"]`` (:attr:`SCHEMA`)."""
        require(state, "history", where=where)
        check_entries(state, self.SCHEMA, where)
        self.history = list(state["history"])

    def open(self) -> None:
        if not self.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._writer = SummaryWriter(str(output_dir(self.out / "tensorboard")))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self) -> None:
        """Rewrite ``metrics.csv`` from :attr:`history` (atomically)."""
        if not self.main:
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(self.history)
        write_atomic(self.out / "metrics.csv", text.getvalue())

    def record(self, row: dict[str, Any]) -> None:
        """An epoch's row as TensorBoard scalars."""
        for key, value in row.items() if self._writer is not None else ():
            if value is not None:
                self._writer.add_scalar(key, value, row["epoch"])

    def epoch_line(self, row: dict[str, Any], of: str, seconds: float, steps: int) -> None:
        if not self.main:
            return
        test = (
            "not evaluated"
            if row["test_accuracy"] is None
            else f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f}"
        )
        capped = row["capped_steps"]
        at_cap = f" ({capped} of {steps} steps stopped at the iteration cap)" if capped else ""
        print(
            f"epoch {row['epoch']}{of}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"{test} | fwd {row['forward_iterations']:.1f} bwd {row['backward_iterations']:.1f} iters{at_cap} | "
            f"{seconds:.1f}s, {row['elapsed_seconds'] / 60:.1f} min in all",
            flush=True,
        )

    def evaluation_line(self, row: dict[str, Any]) -> None:
        """The test result of an epoch evaluated after its line was printed (the run's last)."""
        if self.main:
            print(f"epoch {row['epoch']}: test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f}", flush=True)

    def note(self, message: str, within_epoch: bool = False) -> None:
        """A line on stderr about the run (``mondeq train: ...``), from rank 0; ``within_epoch``: on a
        line of its own below the epoch's progress bar."""
        if self.main:
            below_bar = "\n" if within_epoch and self.progress else ""
            print(f"{below_bar}mondeq train: {message}", file=sys.stderr, flush=True)

    def bar(self, total: int, initial: int, description: str) -> Any:
        """A progress bar over an epoch's batches, starting at ``initial`` (``None`` without progress)."""
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=description, unit="batch", file=sys.stderr)

    def show(self, bar: Any, running: RunningTotals, steps: int, alpha: float) -> None:
        if bar is None:
            return
        bar.update(1)
        bar.set_postfix(
            loss=f"{running.loss / running.examples:.3f}",
            acc=f"{running.correct / running.examples:.3f}",
            fwd=f"{running.forward_iterations / max(steps, 1):.1f}",
            bwd=f"{running.backward_iterations / max(steps, 1):.1f}",
            alpha=f"{alpha:g}",
        )
