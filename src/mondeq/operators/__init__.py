"""Monotone linear operators: dense, interval (dense and convolutional), single and multi-tier convolutions,
the user's own maps; and the per-frequency maps of real signals that convolutions are built on."""

from ..linalg import gmres
from .base import FrozenOperator, MonotoneOperator, Resolvent
from .convolutional import MultiConv, SingleConv
from .fourier import SpectralMap
from .fully_connected import FullyConnected
from .generic import KrylovStats, OperatorFromMaps
from .interval import IntervalFullyConnected, IntervalOperator, IntervalSingleConv

__all__ = [
    "MonotoneOperator",
    "Resolvent",
    "FrozenOperator",
    "FullyConnected",
    "IntervalOperator",
    "IntervalFullyConnected",
    "IntervalSingleConv",
    "SingleConv",
    "MultiConv",
    "SpectralMap",
    "OperatorFromMaps",
    "KrylovStats",
    "gmres",
]
