r"""How a :class:`~mondeq.MonDEQ` differentiates its equilibrium: the adjoint methods.

The equilibrium :math:`z^\star = \sigma(W z^\star + Ux + b)` is found without an autograd tape;
an adjoint attaches the map through which gradients reach :math:`W, U, b` and :math:`x`:

- ``implicit`` (:class:`Implicit`, the default): the exact gradient of the implicit function
  theorem. With :math:`D = \operatorname{diag}\sigma'(p^\star)`, :math:`p^\star = Wz^\star + Ux + b`,
  the backward pass solves :math:`w = D(W^\top w + g)` by the forward solve's splitting method and
  passes :math:`W^\top w + g` on; it costs about as many iterations as the forward solve.
- ``phantom`` (:class:`Phantom`, Geng et al., NeurIPS 2021, arXiv 2111.05177): :math:`K` damped
  steps :math:`z_{k+1} = (1 - \lambda) z_k + \lambda \sigma(W z_k + Ux + b)` from :math:`z_0 = z^\star`,
  differentiated by autograd. Their Jacobian is the truncated Neumann series
  :math:`\lambda \sum_{k<K} ((1-\lambda) I + \lambda DW)^k`, which tends to the exact
  :math:`(I - DW)^{-1}` as :math:`K` grows when :math:`\rho((1-\lambda)I + \lambda DW) < 1`. For a
  monotone :math:`W` every eigenvalue :math:`\mu` of :math:`DW` has :math:`\operatorname{Re}(1 - \mu)
  \ge \min(m, 1)`, so :math:`\lambda < 2\min(m, 1) / (1 + \|W\|)^2` guarantees it; larger
  :math:`\lambda` (the paper's 0.5) is a cheaper, biased descent direction.
- ``jacobian-free`` (:class:`JacobianFree`, Fung et al., AAAI 2022, arXiv 2103.12803): one
  undamped step, i.e. the Jacobian :math:`(I - DW)^{-1}` replaced by :math:`I`. No backward solve.

Caveat: the cheaper gradients are not the gradient of the loss; they trade accuracy per step for
time per step, so compare them on accuracy at equal wall time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .validation import DAMPING, POSITIVE_INT

if TYPE_CHECKING:
    from .layer import MonDEQ
    from .operators.base import FrozenOperator
    from .reuse import _Selection
    from .stats import SolverStats

__all__ = ["GRADIENTS", "Adjoint", "Implicit", "JacobianFree", "Phantom", "get_gradient"]


class Adjoint:
    """How gradients flow from the equilibrium to the parameters and the input.

    :meth:`attach` receives the detached equilibrium ``z`` ``(batch, n)`` and the differentiable
    injection :math:`Ux + b` and returns ``(z_out, pre)``: the layer's differentiable output
    (equal to ``z`` within the solver's tolerance) and the pre-activation :math:`Wz + Ux + b` at
    ``z`` (kept for fixed-point reuse).
    """

    name: str = ""

    def attach(
        self,
        layer: MonDEQ,
        z: Tensor,
        injection: Tensor,
        frozen: FrozenOperator,
        stats: SolverStats,
        selection: _Selection | None = None,
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The settings that define this adjoint (for ``repr`` and configs)."""
        return {}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.options() == self.options()

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{type(self).__name__}({settings})"


class Implicit(Adjoint):
    r"""The exact gradient by the implicit function theorem, solved by the layer's splitting method
    (:meth:`MonDEQ._implicit_backward <mondeq.MonDEQ>`); memory does not grow with the iterations."""

    name = "implicit"

    def attach(self, layer, z, injection, frozen, stats, selection=None):
        pre = layer.linear.multiply(z) + injection
        out = layer.activation(pre)
        derivative = layer.activation.derivative(pre.detach())
        out.register_hook(lambda grad: layer._implicit_backward(grad, derivative, frozen, stats, selection))
        return out, pre


class Phantom(Adjoint):
    r"""``steps`` damped fixed-point steps from the equilibrium, differentiated by autograd.

    Args:
        steps: :math:`K \ge 1`, the number of unrolled steps (memory grows with it).
        damping: :math:`\lambda \in (0, 1]`.
    """

    name = "phantom"

    def __init__(self, steps: int = 5, damping: float = 0.5) -> None:
        self.steps = POSITIVE_INT.check("phantom steps", steps)
        self.damping = DAMPING.check("phantom damping", damping)

    def options(self) -> dict[str, Any]:
        return {"steps": self.steps, "damping": self.damping}

    def attach(self, layer, z, injection, frozen, stats, selection=None):
        weights = layer.linear.weights()  # built once for all steps
        out, first = z, None
        for _ in range(self.steps):
            pre = layer.linear.apply_weights(out, weights) + injection
            first = pre if first is None else first
            step = layer.activation(pre)
            out = step if self.damping == 1 else torch.lerp(out, step, self.damping)
        return out, first


class JacobianFree(Phantom):
    r"""One undamped step :math:`\sigma(W z^\star + Ux + b)`: the Jacobian-free gradient."""

    name = "jacobian-free"

    def __init__(self) -> None:
        super().__init__(steps=1, damping=1.0)

    def options(self) -> dict[str, Any]:
        return {}


#: Adjoints by name (``MonDEQ(gradient=...)``, ``mondeq train --gradient``).
GRADIENTS: dict[str, type[Adjoint]] = {cls.name: cls for cls in (Implicit, Phantom, JacobianFree)}


def get_gradient(gradient: str | Adjoint, **options: Any) -> Adjoint:
    """An adjoint from its name (with ``options``, e.g. ``steps`` and ``damping`` for ``phantom``) or itself."""
    if isinstance(gradient, Adjoint):
        return gradient
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; choose one of {sorted(GRADIENTS)}")
    return GRADIENTS[gradient](**options)
