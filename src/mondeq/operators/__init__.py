"""Monotone linear operators: dense (and its interval variant), single and multi-tier convolutions, the user's own maps."""

from .base import FrozenOperator, MonotoneOperator, Resolvent
from .convolutional import MultiConv, SingleConv
from .fully_connected import FullyConnected, IntervalFullyConnected
from .generic import KrylovStats, Monotone, gmres

__all__ = [
    "MonotoneOperator",
    "Resolvent",
    "FrozenOperator",
    "FullyConnected",
    "IntervalFullyConnected",
    "SingleConv",
    "MultiConv",
    "Monotone",
    "KrylovStats",
    "gmres",
]
