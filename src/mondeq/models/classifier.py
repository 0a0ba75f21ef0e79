"""The paper's classifier: a monDEQ layer and a linear readout of its pooled equilibrium."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..layer import MonDEQ
from .config import ModelConfig
from .kinds import KINDS
from .spectral import NormBound, SpectralBound

__all__ = ["MonDEQClassifier"]


class MonDEQClassifier(nn.Module):
    r"""A monDEQ layer and a readout to class logits.

    With ``config.lipschitz`` :math:`= \gamma` the logits are :math:`\gamma`-Lipschitz in
    :math:`\ell_2` for every parameter value (Revay, Wang & Manchester 2020; Pabbaraju et al. 2021):
    :math:`I - W \succeq mI` and a 1-Lipschitz proximal activation make the equilibrium
    :math:`\|U\|/m`-Lipschitz, so the logits :math:`R P z^\star` are
    :math:`\|R\| \|P\| \|U\| / m`-Lipschitz (:math:`P` the pooling). Exact norm bounds
    (:class:`~mondeq.models.NormBound`) keep :math:`\|U\|, \|R\| \le \sqrt{\gamma m / \|P\|}`.
    The bound holds for the exact equilibrium; a solve to tolerance ``tol`` is that close to it.

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
            compiled=c.compiled,
            gradient=c.adjoint(),
        )
        with torch.no_grad():  # the readout's width follows from the pooling
            features = self.pool(torch.zeros(1, operator.features)).shape[1]
        self.readout = nn.Linear(features, c.num_classes)
        if c.input_norm is not None:
            parametrize.register_parametrization(operator.U, "weight", SpectralBound(c.input_norm, operator.U.weight))
        if c.lipschitz is not None:
            kind = KINDS[c.kind]
            if kind.injection_bound is None or kind.pool_norm is None:
                raise ConfigError(f"lipschitz: no exact norm bound for the {c.kind} model's injection (fc, single-conv)")
            bound = math.sqrt(c.lipschitz * c.m / kind.pool_norm(c))
            parametrize.register_parametrization(operator.U, "weight", kind.injection_bound(c, bound))
            parametrize.register_parametrization(self.readout, "weight", NormBound(bound))

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
