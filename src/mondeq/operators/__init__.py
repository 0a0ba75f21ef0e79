"""Monotone linear operators: dense, single convolution, multi-tier convolution, and one from the user's own maps."""

from .base import FrozenOperator, MonotoneOperator, Resolvent
from .convolutional import MultiConv, SingleConv
from .fully_connected import FullyConnected
from .generic import KrylovStats, Monotone, gmres

__all__ = [
    "MonotoneOperator",
    "Resolvent",
    "FrozenOperator",
    "FullyConnected",
    "SingleConv",
    "MultiConv",
    "Monotone",
    "KrylovStats",
    "gmres",
]
