"""A parametrisation that bounds the spectral norm of the input injection."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SpectralBound"]


class SpectralBound(nn.Module):
    r"""Parametrization :math:`U \mapsto U \cdot \min(1, c / \hat\sigma(U))`, keeping :math:`\|U\| \le c`.

    :math:`\hat\sigma` is the largest singular value of the weight reshaped to
    ``(out, -1)``, tracked by one power-iteration step per training forward (as
    ``torch.nn.utils.spectral_norm``). For a dense ``U`` that is its operator norm; for a
    convolution it is a proxy. Since the Lipschitz bound of the follow-up paper is
    :math:`\|R\|\|U\|/m`, bounding :math:`\|U\|` (with a large :math:`m`) trades accuracy for a
    smaller bound. Certificates always use the true operator norm, never this estimate.
    """

    def __init__(self, bound: float, weight: Tensor) -> None:
        super().__init__()
        self.bound = float(bound)
        matrix = weight.detach().reshape(weight.shape[0], -1)
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("u", torch.randn(matrix.shape[0], generator=generator).to(matrix))
        self.register_buffer("v", torch.randn(matrix.shape[1], generator=generator).to(matrix))
        for _ in range(30):
            self._power_step(matrix)

    @torch.no_grad()
    def _power_step(self, matrix: Tensor) -> None:
        self.v.copy_(nn.functional.normalize(matrix.T @ self.u, dim=0))
        self.u.copy_(nn.functional.normalize(matrix @ self.v, dim=0))

    def forward(self, weight: Tensor) -> Tensor:
        matrix = weight.reshape(weight.shape[0], -1)
        if self.training:
            self._power_step(matrix.detach())
        sigma = self.u @ matrix @ self.v
        return weight * (self.bound / torch.clamp(sigma, min=self.bound))
