r"""Dense (fully connected) monotone operators."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..validation import POSITIVE_INT
from .base import MonotoneOperator, Resolvent

__all__ = ["DenseOperator", "FullyConnected"]


class DenseOperator(MonotoneOperator):
    r"""Base of the dense operators: :math:`W` an explicit :math:`n \times n` matrix from parameters that
    subclasses define (:meth:`weights`), the injection :math:`Ux + b` an ``nn.Linear``.

    The resolvent is the explicit inverse of :math:`I + \alpha(I - W)`, an :math:`n \times n` matrix
    computed once per parameter update by an LU factorisation.

    Shape:
        - Input: :math:`(N, *)` with ``in_features`` elements after the batch dimension.
        - Hidden state: :math:`(N, n)`.
    """

    def __init__(self, in_features: int, width: int, m: float) -> None:
        super().__init__(m)
        self.in_features = POSITIVE_INT.check("in_features", in_features)
        self.features = POSITIVE_INT.check("width", width)
        self.U = nn.Linear(in_features, width)

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
                f"{type(self).__name__} expects input of shape (batch, {self.in_features}) or "
                f"(batch, ...) with {self.in_features} features per sample, got {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, width={self.features}, m={self.m}"


class FullyConnected(DenseOperator):
    r"""Dense monotone operator :math:`W = (1-m)I - A^\top A + B - B^\top`.

    For every :math:`A, B`: :math:`\tfrac12(W + W^\top) = (1-m)I - A^\top A \preceq (1-m)I`,
    so :math:`I - W \succeq mI`. The injection is :math:`Ux + b`.

    Args:
        in_features: size of each input sample (inputs are flattened after the batch dim).
        width: hidden units :math:`n`.
        m: monotonicity margin, :math:`m > 0`.

    Attributes:
        A, B: ``(width, width)`` parameters. U: ``nn.Linear(in_features, width)``.
    """

    def __init__(self, in_features: int, width: int, m: float = 0.1) -> None:
        super().__init__(in_features, width, m)
        self.A = nn.Parameter(torch.empty(self.features, self.features))
        self.B = nn.Parameter(torch.empty(self.features, self.features))
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
