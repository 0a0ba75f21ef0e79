r"""The settings of one equilibrium solve, as a validated value."""

from __future__ import annotations

from dataclasses import dataclass

from .. import tolerances
from ..validation import COUNT, POSITIVE_INT, TOLERANCE
from .base import SplittingMethod
from .registry import SOLVERS, get_solver

__all__ = ["SolverOptions"]


@dataclass(frozen=True)
class SolverOptions:
    r"""How one equilibrium solve runs: splitting method, stopping rule and acceleration.

    Validated once, on construction (``ValueError`` / ``TypeError`` naming the field); a changed
    copy comes from :func:`dataclasses.replace`.

    Attributes:
        solver: the name of a splitting method in :data:`~mondeq.solvers.SOLVERS` (``"pr"``,
            ``"dr"``, ``"fb"``); long names and method objects are replaced by that name.
        tol: the relative fixed-point residual to stop at, in (0, 1).
        max_iter: the iteration cap, an integer >= 1.
        anderson: memory of Anderson acceleration, an integer >= 0 (0: off).
        compiled: run each iteration compiled by :func:`torch.compile` (eager, with a
            :class:`~mondeq.errors.CompileWarning`, when compiling fails).
    """

    solver: str = "pr"
    tol: float = tolerances.LAYER
    max_iter: int = 100
    anderson: int = 0
    compiled: bool = False

    def __post_init__(self) -> None:
        method = get_solver(self.solver)
        if SOLVERS.get(method.name) is not type(method):
            raise ValueError(f"method {type(method).__name__} is not in mondeq.solvers.SOLVERS; register it there")
        object.__setattr__(self, "solver", method.name)
        object.__setattr__(self, "tol", TOLERANCE.check("tol", self.tol))
        object.__setattr__(self, "max_iter", POSITIVE_INT.check("max_iter", self.max_iter))
        object.__setattr__(self, "anderson", COUNT.check("anderson", self.anderson))
        if not isinstance(self.compiled, bool):
            raise TypeError(f"compiled must be a bool, got {type(self.compiled).__name__}")

    @property
    def splitting(self) -> SplittingMethod:
        """The splitting method :attr:`solver` names."""
        return SOLVERS[self.solver]()
