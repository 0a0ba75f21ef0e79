r"""What a :class:`~mondeq.MonDEQ` call measured: one record per solve direction."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from .solvers import SolverResult, Status

__all__ = ["SolveRecord", "SolverStats"]


@dataclass(frozen=True)
class SolveRecord:
    """One equilibrium solve, without its solution.

    Attributes:
        iterations: iterations run.
        residual: final relative fixed-point residual.
        seconds: wall time of the solve.
        status: how it stopped (:class:`~mondeq.solvers.Status`); :attr:`converged` when it
            reached its tolerance.
        residuals: ``residuals[k]`` is the residual after iteration ``k + 1``, reached
            ``times[k]`` seconds after the start.
        inner_iterations: iterations of an iterative resolvent's inner solves over the whole
            solve (``None`` for a direct resolvent).
        inner_residual: their largest final relative residual (``None`` likewise).
    """

    iterations: int
    residual: float
    seconds: float
    status: Status
    residuals: list[float] = field(default_factory=list, repr=False)
    times: list[float] = field(default_factory=list, repr=False)
    inner_iterations: int | None = None
    inner_residual: float | None = None

    @property
    def converged(self) -> bool:
        return self.status is Status.CONVERGED

    @classmethod
    def of(cls, result: SolverResult, inner: object | None = None) -> SolveRecord:
        """The record of a solver's result (and of the resolvent's inner solves, ``inner``, when iterative)."""
        return cls(
            result.iterations,
            result.residual,
            result.seconds,
            result.status,
            result.residuals,
            result.times,
            None if inner is None else inner.iterations,
            None if inner is None else inner.residual,
        )


def _flat(direction: str, key: str) -> property:
    """Deprecated read-only ``stats.<direction>_<key>``: ``stats.<direction>.<key>``."""

    def get(self: SolverStats) -> object:
        warnings.warn(
            f"SolverStats.{direction}_{key} is deprecated; use stats.{direction}.{key}", DeprecationWarning, stacklevel=2
        )
        record = getattr(self, direction)
        if record is None:
            return [] if key in ("residuals", "times") else None
        return getattr(record, key)

    return property(get, doc=f"Deprecated: ``stats.{direction}.{key}``.")


@dataclass
class SolverStats:
    """Statistics of the last call of a :class:`~mondeq.MonDEQ`.

    Attributes:
        alpha: the step size used.
        forward: :class:`SolveRecord` of the equilibrium solve.
        backward: :class:`SolveRecord` of the implicit backward solve, ``None`` until it ran.
    """

    alpha: float
    forward: SolveRecord
    backward: SolveRecord | None = None

    def as_dict(self) -> dict[str, float | int | bool | None]:
        """``alpha`` and ``{forward,backward}_{iterations,residual,seconds,converged}`` (``None`` before backward)."""
        out: dict[str, float | int | bool | None] = {"alpha": self.alpha}
        for direction, record in (("forward", self.forward), ("backward", self.backward)):
            for key in ("iterations", "residual", "seconds", "converged"):
                out[f"{direction}_{key}"] = None if record is None else getattr(record, key)
        return out

    forward_iterations = _flat("forward", "iterations")
    forward_residual = _flat("forward", "residual")
    forward_seconds = _flat("forward", "seconds")
    forward_converged = _flat("forward", "converged")
    forward_residuals = _flat("forward", "residuals")
    forward_times = _flat("forward", "times")
    backward_iterations = _flat("backward", "iterations")
    backward_residual = _flat("backward", "residual")
    backward_seconds = _flat("backward", "seconds")
    backward_converged = _flat("backward", "converged")
    backward_residuals = _flat("backward", "residuals")
    backward_times = _flat("backward", "times")
