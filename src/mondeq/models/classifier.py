"""The paper's classifier: a monDEQ layer and a linear readout of its pooled equilibrium."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..layer import MonDEQ
from .config import ModelConfig
from .kinds import KINDS
from .spectral import SpectralBound

__all__ = ["MonDEQClassifier"]


class MonDEQClassifier(nn.Module):
    """A monDEQ layer and a readout to class logits.

    Shape:
        - Input: :math:`(N, C, s, s)` images.
        - Output: :math:`(N, \\text{classes})` logits.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        operator = KINDS[c.kind].operator(c)
        self.layer = MonDEQ(
            operator,
            activation=c.activation,
            solver=c.solver,
            alpha=c.alpha,
            tol=c.tol,
            max_iter=c.max_iter,
            anderson=c.anderson,
            gradient=c.adjoint(),
        )
        with torch.no_grad():  # the readout's width follows from the pooling
            features = self.pool(torch.zeros(1, operator.features)).shape[1]
        self.readout = nn.Linear(features, c.num_classes)
        if c.input_norm is not None:
            parametrize.register_parametrization(operator.U, "weight", SpectralBound(c.input_norm, operator.U.weight))

    def features(self, x: Tensor) -> Tensor:
        """The pooled equilibrium fed to the readout, ``(N, features)``."""
        return self.pool(self.layer(x))

    def pool(self, z: Tensor | tuple[Tensor, ...]) -> Tensor:
        """Readout features ``(N, features)`` of a hidden state (flat or structured), pooled as the
        model kind says (4x4 average pooling for single-conv, the coarsest tier or all tiers for multi-conv)."""
        if isinstance(z, Tensor) and z.dim() == 2:
            z = self.layer.linear.unflatten(z)
        z = KINDS[self.config.kind].pool(self.config, z)
        return z.reshape(z.shape[0], -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x))
