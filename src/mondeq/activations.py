r"""Activations as proximal operators of convex functions.

A monDEQ needs :math:`\sigma = \operatorname{prox}_f` for a closed convex :math:`f`, which for
an elementwise map means :math:`\sigma` is nondecreasing and 1-Lipschitz. The splitting
methods with step size :math:`\alpha` need :math:`\operatorname{prox}_{\alpha f}`, which is
*not* :math:`\sigma` unless :math:`f` is an indicator (ReLU, hard-tanh). Since
:math:`\sigma^{-1} = I + \partial f`, :math:`z = \operatorname{prox}_{\alpha f}(x)` solves
:math:`(1 - \alpha) z + \alpha \sigma^{-1}(z) = x`; written for the pre-activation
:math:`u = \sigma^{-1}(z)`, i.e. :math:`z = \sigma(u)`,

.. math::
    g(u) = \alpha u + (1 - \alpha)\,\sigma(u) - x = 0, \qquad
    g'(u) = \alpha + (1 - \alpha)\,\sigma'(u) \in [\min(\alpha, 1), \max(\alpha, 1)],

a scalar equation on the whole real line whose slope is bounded above and below (no domain
edge where :math:`\sigma^{-1}` blows up). :class:`ProximalActivation` solves it by Newton's
method with a bisection safeguard, and subclasses with a closed form override
:meth:`ProximalActivation.prox`.

To add an activation, subclass :class:`ProximalActivation` and implement ``forward``
(:math:`\sigma`) and ``derivative`` (:math:`\sigma'`); override ``prox`` when it has a closed form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ProximalActivation",
    "ReLU",
    "LeakyReLU",
    "Tanh",
    "Sigmoid",
    "Softplus",
    "HardTanh",
    "get_activation",
    "ACTIVATIONS",
]


class ProximalActivation(nn.Module):
    r"""Base class: an elementwise :math:`\sigma = \operatorname{prox}_f`, :math:`f` convex.

    ``forward`` must be differentiable by autograd (the layer takes one step of it on the
    tape); ``derivative`` gives :math:`\sigma'` for the implicit backward pass.
    """

    newton_steps: int = 50

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        r""":math:`\sigma'(x)`, values in :math:`[0, 1]`."""
        raise NotImplementedError

    def prox(self, x: Tensor, alpha: float) -> Tensor:
        r""":math:`\operatorname{prox}_{\alpha f}(x) = \sigma(u)` where :math:`\alpha u + (1-\alpha)\sigma(u) = x`."""
        if alpha == 1.0:
            return self.forward(x)
        return self.forward(self._prox_preactivation(x, alpha))

    def prox_derivative(self, x: Tensor, alpha: float) -> Tensor:
        r"""Derivative of :math:`\operatorname{prox}_{\alpha f}` at :math:`x`:
        :math:`\sigma'(u) / (\alpha + (1 - \alpha)\sigma'(u))`."""
        d = self.derivative(self._prox_preactivation(x, alpha))
        return d / (alpha + (1 - alpha) * d)

    def _prox_preactivation(self, x: Tensor, alpha: float) -> Tensor:
        r"""The root :math:`u` of :math:`g(u) = \alpha u + (1-\alpha)\sigma(u) - x`.

        Newton's method from :math:`u = x`, safeguarded by bisection: :math:`g` is increasing with
        slope at least :math:`s = \min(\alpha, 1)`, so the root lies within :math:`|g(x)| / s` of
        :math:`x`, and each step shrinks that bracket. Stops when every Newton step is below the
        rounding error of :math:`g` (a few ulps of its terms) divided by its slope; an element whose
        step is that small stays put.
        """
        if alpha == 1.0:
            return x
        eps = torch.finfo(x.dtype).eps
        u = x
        residual = (1 - alpha) * (self.forward(u) - u)  # g(x)
        radius = residual.abs() / min(alpha, 1.0)
        lo, hi = u - radius, u + radius
        scale = x.abs()  # size of the terms of g, for the rounding error of the residual
        for _ in range(self.newton_steps):
            slope = alpha + (1 - alpha) * self.derivative(u)
            step = residual / slope
            done = step.abs() <= 4 * eps * (1 + u.abs() + scale / slope)
            if bool(done.all()):
                break
            hi = torch.where(residual > 0, u, hi)
            lo = torch.where(residual <= 0, u, lo)
            newton = u - step
            u = torch.where(done, u, torch.where((newton >= lo) & (newton <= hi), newton, 0.5 * (lo + hi)))
            sigma = self.forward(u)
            residual = alpha * u + (1 - alpha) * sigma - x
            scale = (alpha * u).abs() + ((1 - alpha) * sigma).abs() + x.abs()
        return u


class ReLU(ProximalActivation):
    r""":math:`\sigma(x) = \max(x, 0)`, the prox of the indicator of :math:`[0, \infty)`."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def derivative(self, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    def prox(self, x: Tensor, alpha: float) -> Tensor:
        return torch.relu(x)


class HardTanh(ProximalActivation):
    r""":math:`\sigma(x) = \operatorname{clip}(x, -1, 1)`, the prox of the indicator of :math:`[-1, 1]`."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, -1.0, 1.0)

    def derivative(self, x: Tensor) -> Tensor:
        return ((x > -1) & (x < 1)).to(x.dtype)

    def prox(self, x: Tensor, alpha: float) -> Tensor:
        return torch.clamp(x, -1.0, 1.0)


class LeakyReLU(ProximalActivation):
    r""":math:`\sigma(x) = \max(x, a x)`, :math:`0 < a \le 1`.

    :math:`f(z) = \tfrac12 (1/a - 1) \min(z, 0)^2`, so
    :math:`\operatorname{prox}_{\alpha f}(x) = x / (1 + \alpha(1/a - 1))` for :math:`x < 0`.
    """

    def __init__(self, negative_slope: float = 0.1) -> None:
        super().__init__()
        if not 0 < negative_slope <= 1:
            raise ValueError(f"negative_slope must lie in (0, 1], got {negative_slope}")
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def derivative(self, x: Tensor) -> Tensor:
        one = torch.ones_like(x)
        return torch.where(x > 0, one, self.negative_slope * one)

    def prox(self, x: Tensor, alpha: float) -> Tensor:
        shrink = 1.0 / (1.0 + alpha * (1.0 / self.negative_slope - 1.0))
        return torch.where(x > 0, x, shrink * x)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Tanh(ProximalActivation):
    r""":math:`\sigma = \tanh`, the prox of
    :math:`f(z) = z\operatorname{artanh} z + \tfrac12\log(1 - z^2) - \tfrac12 z^2` on :math:`(-1, 1)`."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def derivative(self, x: Tensor) -> Tensor:
        return 1 - torch.tanh(x) ** 2


class Sigmoid(ProximalActivation):
    r""":math:`\sigma(x) = 1 / (1 + e^{-x})`, with :math:`\sigma^{-1} = \operatorname{logit}` on :math:`(0, 1)`."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def derivative(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return s * (1 - s)


class Softplus(ProximalActivation):
    r""":math:`\sigma(x) = \log(1 + e^x)`, :math:`\sigma^{-1}(z) = \log(e^z - 1)` on :math:`(0, \infty)`."""

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x)

    def derivative(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)


ACTIVATIONS: dict[str, type[ProximalActivation]] = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "softplus": Softplus,
    "hardtanh": HardTanh,
}


def get_activation(activation: str | ProximalActivation) -> ProximalActivation:
    """An activation instance from a name in :data:`ACTIVATIONS` or an instance."""
    if isinstance(activation, ProximalActivation):
        return activation
    if isinstance(activation, str):
        key = activation.lower().replace("-", "_")
        if key in ACTIVATIONS:
            return ACTIVATIONS[key]()
    raise ValueError(
        f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)} or pass a ProximalActivation instance"
    )
