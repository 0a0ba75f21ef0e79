r"""What a :class:`~mondeq.MonDEQ` call measured: one record per solve direction."""

from __future__ import annotations

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
