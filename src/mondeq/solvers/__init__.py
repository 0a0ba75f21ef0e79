"""Operator-splitting solvers for monotone equilibrium problems, their registry and settings."""

from .anderson import Anderson
from .base import SolverResult, SplittingMethod, SplittingProblem, Status, WarmStart, solve
from .douglas_rachford import DouglasRachford
from .forward_backward import ForwardBackward
from .options import SolverOptions
from .peaceman_rachford import PeacemanRachford
from .registry import ALIASES, SOLVERS, get_solver

__all__ = [
    "ALIASES",
    "Anderson",
    "DouglasRachford",
    "ForwardBackward",
    "PeacemanRachford",
    "SOLVERS",
    "SolverOptions",
    "SolverResult",
    "SplittingMethod",
    "SplittingProblem",
    "Status",
    "get_solver",
    "WarmStart",
    "solve",
]
