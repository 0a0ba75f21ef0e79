"""Monotone linear operators: dense, single convolution, multi-tier convolution."""

from .base import FrozenOperator, MonotoneOperator, Resolvent
from .convolutional import MultiConv, SingleConv
from .fully_connected import FullyConnected

__all__ = ["MonotoneOperator", "Resolvent", "FrozenOperator", "FullyConnected", "SingleConv", "MultiConv"]
