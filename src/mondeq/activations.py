r"""Activations as proximal operators of convex functions.

A monDEQ needs :math:`\sigma = \operatorname{prox}_f` for a closed convex :math:`f`, which for
an elementwise map means :math:`\sigma` is nondecreasing and 1-Lipschitz. The splitting
methods with step size :math:`\alpha` need :math:`\operatorname{prox}_{\alpha f}`, which is
*not* :math:`\sigma` unless :math:`f` is an indicator (ReLU, hard-tanh). Since
:math:`\sigma^{-1} = I + \partial f`,

.. math::
    z = \operatorname{prox}_{\alpha f}(x) \iff (1 - \alpha) z + \alpha \sigma^{-1}(z) = x,

a scalar equation whose left side has slope :math:`1 - \alpha + \alpha (\sigma^{-1})' \ge 1`;
:class:`ProximalActivation` solves it by safeguarded Newton iteration, and subclasses with a
closed form override :meth:`ProximalActivation.prox`.

To add an activation, subclass :class:`ProximalActivation` and implement ``forward``
(:math:`\sigma`), ``derivative`` (:math:`\sigma'`), and either ``prox`` or the pair
``inverse`` / ``inverse_derivative`` together with the open ``domain`` of :math:`\sigma^{-1}`.
"""

from __future__ import annotations

import math

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

    #: The open interval containing the range of sigma (where sigma^{-1} is defined).
    domain: tuple[float, float] = (-math.inf, math.inf)
    newton_steps: int = 50

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        r""":math:`\sigma'(x)`, values in :math:`[0, 1]`."""
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        r""":math:`\sigma^{-1}(z)` on :attr:`domain`."""
        raise NotImplementedError

    def inverse_derivative(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        r""":math:`(\sigma^{-1})'(z) \ge 1`."""
        raise NotImplementedError

    def prox(self, x: Tensor, alpha: float) -> Tensor:
        r""":math:`\operatorname{prox}_{\alpha f}(x)`: solves :math:`(1-\alpha)z + \alpha\sigma^{-1}(z) = x`.

        Newton's method from :math:`z = \sigma(x)` with a bisection safeguard on the bracket
        ``domain``; the residual function is strictly increasing with slope :math:`\ge 1`.
        """
        if alpha == 1.0:
            return self.forward(x)
        lo_bound, hi_bound = self.domain
        eps = torch.finfo(x.dtype).eps
        z = self.forward(x)
        # The residual r(z) = (1-a) z + a s^{-1}(z) - x has slope >= 1, so the root lies
        # within |r(s(x))| = |1-a| |s(x) - x| of s(x).
        radius = abs(1 - alpha) * (z - x).abs()
        lo = torch.clamp(z - radius, min=lo_bound)
        hi = torch.clamp(z + radius, max=hi_bound)
        for _ in range(self.newton_steps):
            z = z.clamp(lo_bound + 4 * eps, hi_bound - 4 * eps)
            residual = (1 - alpha) * z + alpha * self.inverse(z) - x
            step = residual / ((1 - alpha) + alpha * self.inverse_derivative(z))
            if bool((step.abs() <= 4 * eps * (1 + z.abs())).all()):
                break
            hi = torch.where(residual > 0, z, hi)
            lo = torch.where(residual <= 0, z, lo)
            newton = z - step
            inside = (newton > lo) & (newton < hi)
            z = torch.where(inside, newton, 0.5 * (lo + hi))
        return z

    def prox_derivative(self, x: Tensor, alpha: float) -> Tensor:
        r"""Derivative of :math:`\operatorname{prox}_{\alpha f}` at :math:`x`."""
        z = self.prox(x, alpha)
        return 1.0 / ((1 - alpha) + alpha * self.inverse_derivative(z))


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
    r""":math:`\sigma = \tanh`, :math:`\sigma^{-1} = \operatorname{artanh}` on :math:`(-1, 1)`."""

    domain = (-1.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def derivative(self, x: Tensor) -> Tensor:
        return 1 - torch.tanh(x) ** 2

    def inverse(self, z: Tensor) -> Tensor:
        return torch.atanh(z)

    def inverse_derivative(self, z: Tensor) -> Tensor:
        return 1 / (1 - z**2)


class Sigmoid(ProximalActivation):
    r""":math:`\sigma(x) = 1 / (1 + e^{-x})`, :math:`\sigma^{-1} = \operatorname{logit}` on :math:`(0, 1)`."""

    domain = (0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def derivative(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return s * (1 - s)

    def inverse(self, z: Tensor) -> Tensor:
        return torch.logit(z)

    def inverse_derivative(self, z: Tensor) -> Tensor:
        return 1 / (z * (1 - z))


class Softplus(ProximalActivation):
    r""":math:`\sigma(x) = \log(1 + e^x)`, :math:`\sigma^{-1}(z) = \log(e^z - 1)` on :math:`(0, \infty)`."""

    domain = (0.0, math.inf)

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x)

    def derivative(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def inverse(self, z: Tensor) -> Tensor:
        # log(e^z - 1) = z + log(1 - e^{-z}), stable for large z.
        return z + torch.log(-torch.expm1(-z))

    def inverse_derivative(self, z: Tensor) -> Tensor:
        return -1 / torch.expm1(-z)


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
