"""The wall time of a run across resumptions, and its time budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import distributed
from ..validation import NON_NEGATIVE, POSITIVE, Schema, check_entries, nullable

__all__ = ["TimeBudget"]


class TimeBudget:
    """Seconds a run has spent (across resumptions) and whether ``minutes`` leave room for more.

    A budgeted run stops between two batches early enough for a last evaluation: the time of the
    previous evaluation is held back (before the first, an estimate the caller gives). Once the
    run ran out of its budget it stays stopped until given a larger one (:attr:`spent`), even
    when its next evaluation would be quicker than the reserve it stopped for.

    Args:
        minutes: the budget (``None``: no limit).
        clock: seconds of a monotonic clock (the trainer's, replaceable in tests).
    """

    def __init__(self, minutes: float | None, clock: Callable[[], float]) -> None:
        self.minutes = minutes
        self.clock = clock
        self.elapsed = 0.0  # seconds before the current start()
        self.evaluation_seconds: float | None = None
        self.spent: float | None = None  # the budget (minutes) the run last ran out of
        self._start: float | None = None

    def start(self) -> None:
        self._start = self.clock() - self.elapsed

    def stop(self) -> None:
        self.elapsed, self._start = self.seconds(), None

    def seconds(self) -> float:
        """Wall time this run has spent so far, across resumptions."""
        return self.elapsed if self._start is None else self.clock() - self._start

    def exhausted(self, estimated_evaluation: float) -> bool:
        """Whether no room is left for another batch and the final evaluation (every rank gets the
        same answer); ``estimated_evaluation`` stands for the evaluation's time until one was measured."""
        if self.minutes is None:
            return False
        if self.spent is not None and self.spent >= self.minutes:
            return True
        reserve = self.evaluation_seconds if self.evaluation_seconds is not None else estimated_evaluation
        return distributed.any_rank(self.seconds() + reserve >= 60 * self.minutes)

    def fraction(self) -> float:
        """The fraction of the budget spent, rank 0's on every rank."""
        return distributed.broadcast_float(min(1.0, self.seconds() / (60 * self.minutes)))

    def spend(self) -> None:
        """Record that the run ran out of its budget."""
        self.spent = self.minutes

    #: What its checkpoint entries must be.
    SCHEMA: Schema = {
        "elapsed": (NON_NEGATIVE.accepts, "a finite number >= 0"),
        "budget_spent": (nullable(POSITIVE), "null or a finite number > 0"),
        "evaluation_seconds": (nullable(NON_NEGATIVE), "null or a finite number >= 0"),
    }

    def state_dict(self) -> dict[str, Any]:
        """Its checkpoint entries: the seconds spent, the budget last run out of, the last evaluation's seconds."""
        return {"elapsed": self.seconds(), "budget_spent": self.spent, "evaluation_seconds": self.evaluation_seconds}

    def load_state_dict(self, state: dict[str, Any], where: str = "checkpoint") -> None:
        """Take :meth:`state_dict`'s entries from ``state`` (absent ones: a fresh budget's), checked by :attr:`SCHEMA`."""
        check_entries(state, self.SCHEMA, where)
        self.elapsed = float(state.get("elapsed", 0.0))
        self.spent = state.get("budget_spent")
        self.evaluation_seconds = state.get("evaluation_seconds")
