r"""Fully connected monotone operator."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import MonotoneOperator, Resolvent, positive_int

__all__ = ["FullyConnected"]


class FullyConnected(MonotoneOperator):
    r"""Dense monotone operator :math:`W = (1-m)I - A^\top A + B - B^\top`.

    For every :math:`A, B`: :math:`\tfrac12(W + W^\top) = (1-m)I - A^\top A \preceq (1-m)I`,
    so :math:`I - W \succeq mI`. The injection is :math:`Ux + b`.

    Args:
        in_features: size of each input sample (inputs are flattened after the batch dim).
        width: hidden units :math:`n`.
        m: monotonicity margin, :math:`m > 0`.

    Shape:
        - Input: :math:`(N, *)` with ``in_features`` elements after the batch dimension.
        - Hidden state: :math:`(N, n)`.

    Attributes:
        A, B: ``(width, width)`` parameters. U: ``nn.Linear(in_features, width)``.

    The resolvent is the explicit inverse of :math:`I + \alpha(I - W)`, an :math:`n \times n`
    matrix computed once per parameter update by an LU factorisation.
    """

    def __init__(self, in_features: int, width: int, m: float = 0.1) -> None:
        super().__init__(m)
        self.in_features = positive_int("in_features", in_features)
        self.features = width = positive_int("width", width)
        self.U = nn.Linear(in_features, width)
        self.A = nn.Parameter(torch.empty(width, width))
        self.B = nn.Parameter(torch.empty(width, width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.features)
        nn.init.uniform_(self.A, -bound, bound)
        nn.init.uniform_(self.B, -bound, bound)
        self.U.reset_parameters()

    def weights(self) -> Tensor:
        """:math:`W` as a matrix (its ``.T`` is :math:`W^\top`)."""
        eye = torch.eye(self.features, dtype=self.A.dtype, device=self.A.device)
        return (1 - self.m) * eye - self.A.T @ self.A + self.B - self.B.T

    def apply_weights(self, z: Tensor, weights: Tensor) -> Tensor:
        return z @ weights.T  # rows are samples: (W z)^T = z^T W^T

    def build_resolvent(self, weights: Tensor, alpha: float) -> Resolvent:
        eye = torch.eye(self.features, dtype=weights.dtype, device=weights.device)
        inverse = torch.linalg.inv((1 + alpha) * eye - alpha * weights)
        inverse_t = inverse.T.contiguous()
        # Rows are samples: (M^{-1} y)^T = y^T M^{-T}.
        return Resolvent(lambda y: y @ inverse_t, lambda y: y @ inverse)

    def inject(self, x: Tensor) -> Tensor:
        return self.U(x.reshape(x.shape[0], self.in_features))

    def check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"FullyConnected expects input of shape (batch, {self.in_features}) or "
                f"(batch, ...) with {self.in_features} features per sample, got {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, width={self.features}, m={self.m}"
