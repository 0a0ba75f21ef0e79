r"""Dense (fully connected) monotone operators."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..validation import POSITIVE_INT
from .base import MonotoneOperator, Resolvent

__all__ = ["DenseOperator", "FullyConnected", "IntervalFullyConnected"]


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


class IntervalFullyConnected(DenseOperator):
    r"""Dense monotone operator whose interval extension converges too (IBP-MonDEQ, Wei & Kolter,
    ICLR 2022): :math:`W = D^{-1/2} M D^{-1/2}` with :math:`D = \operatorname{diag}(d)`,
    :math:`d_i = \frac{1}{2(1-m)} \big(\sum_j |M_{ij}| + \sum_j |M_{ji}|\big)`.

    For every :math:`M`, the elementwise absolute value :math:`|W|` has
    :math:`x^\top |W| x \le \sum_{ij} \frac{|M_{ij}|}{\sqrt{d_i d_j}} \frac{x_i^2 + x_j^2}{2} = (1-m)\|x\|^2`,
    so :math:`\tfrac12(|W| + |W|^\top) \preceq (1-m) I`. Hence (i) :math:`I - W \succeq mI`, as for every
    monotone operator here, and (ii) the spectral radius of the nonnegative matrix :math:`|W|` is at most
    :math:`1 - m < 1` (its Perron vector :math:`v` has :math:`\rho \|v\|^2 = v^\top |W| v`): the interval
    fixed point :math:`[\underline z, \overline z] = \sigma(W \mu \pm |W| r + [\underline b, \overline b])`
    (:math:`\mu, r` the interval's centre and radius) exists, is unique, and the interval iteration
    converges to it (:func:`mondeq.robust.equilibrium_box`). Requires :math:`0 < m < 1`.

    Args:
        in_features: size of each input sample (flattened after the batch dim).
        width: hidden units :math:`n`.
        m: monotonicity margin, :math:`0 < m < 1`.

    Attributes:
        M: ``(width, width)``, unconstrained. U: ``nn.Linear(in_features, width)``.
    """

    def __init__(self, in_features: int, width: int, m: float = 0.5) -> None:
        if not (isinstance(m, (int, float)) and 0 < m < 1):
            raise ValueError(f"the interval operator needs a margin 0 < m < 1, got {m!r}")
        super().__init__(in_features, width, m)
        self.M = nn.Parameter(torch.empty(self.features, self.features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.features)
        nn.init.uniform_(self.M, -bound, bound)
        self.U.reset_parameters()

    def weights(self) -> Tensor:
        """:math:`W` as a matrix (its ``.T`` is :math:`W^\top`)."""
        magnitude = self.M.abs()
        d = (magnitude.sum(dim=1) + magnitude.sum(dim=0)) / (2 * (1 - self.m)) + torch.finfo(self.M.dtype).tiny
        scale = d.rsqrt()
        return scale[:, None] * self.M * scale[None, :]
