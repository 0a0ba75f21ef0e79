r"""The settings of one equilibrium solve, as a validated value."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import SplittingMethod
from .registry import SOLVERS, get_solver

__all__ = ["SolverOptions", "positive_finite"]


def positive_finite(name: str, value: object) -> float:
    """``value`` as a float if it is a finite number > 0; else ``ValueError`` naming ``name``."""
    if not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SolverOptions:
    r"""How one equilibrium solve runs: method, stopping rule and acceleration.

    Validated once, on construction (``ValueError`` naming the field); a changed copy comes
    from :func:`dataclasses.replace`.

    Attributes:
        method: the name of a splitting method in :data:`~mondeq.solvers.SOLVERS` (``"pr"``,
            ``"dr"``, ``"fb"``); long names and method objects are replaced by that name.
        tol: the relative fixed-point residual to stop at, in (0, 1).
        max_iter: the iteration cap, an integer >= 1.
        anderson: memory of Anderson acceleration, an integer >= 0 (0: off).
    """

    method: str = "pr"
    tol: float = 1e-4
    max_iter: int = 100
    anderson: int = 0

    def __post_init__(self) -> None:
        solver = get_solver(self.method)
        if SOLVERS.get(solver.name) is not type(solver):
            raise ValueError(f"method {type(solver).__name__} is not in mondeq.solvers.SOLVERS; register it there")
        object.__setattr__(self, "method", solver.name)
        object.__setattr__(self, "tol", positive_finite("tol", self.tol))
        if self.tol >= 1:  # a relative residual below 1 is met by almost any guess: nothing would be solved
            raise ValueError(f"tol is a relative residual and must be < 1, got {self.tol!r}")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not isinstance(self.anderson, int) or self.anderson < 0:
            raise ValueError(f"anderson (memory) must be a non-negative integer, got {self.anderson!r}")

    @property
    def solver(self) -> SplittingMethod:
        """The splitting method :attr:`method` names."""
        return SOLVERS[self.method]()
