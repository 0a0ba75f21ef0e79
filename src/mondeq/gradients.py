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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import DoubleBackwardError
from .validation import DAMPING, POSITIVE_INT

if TYPE_CHECKING:
    from .activations import ProximalActivation
    from .operators.base import FrozenOperator, MonotoneOperator
    from .reuse import _Selection
    from .solvers import WarmStart
    from .stats import SolveRecord, SolverStats

__all__ = ["GRADIENTS", "Adjoint", "Equilibrium", "Implicit", "JacobianFree", "Phantom", "get_gradient"]

#: ``solve(frozen, activation, prox, injection, warm) -> (z, pre, record)``: the equilibrium
#: :math:`z = \sigma(Wz + b)` of ``frozen``'s :math:`W` with the layer's backward settings, checked
#: as the layer checks its solves; ``pre`` is :math:`Wz + b` from the solve's final residual test
#: (``None`` when it has none).
BackwardSolve = Callable[
    ["FrozenOperator", Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], Tensor, "WarmStart | None"],
    "tuple[Tensor, Tensor | None, SolveRecord]",
]


@dataclass(frozen=True)
class Equilibrium:
    r"""What a layer hands its adjoint after a forward solve.

    Attributes:
        z: the detached equilibrium ``(batch, n)``.
        injection: the differentiable :math:`Ux + b` ``(batch, n)``.
        operator: the monotone operator (differentiable :math:`W`).
        activation: :math:`\sigma`.
        frozen: the detached maps of :math:`W` the forward solve used (:math:`\alpha`, resolvent).
        stats: the solve statistics, whose ``backward`` record an adjoint fills in.
        solve: the layer's :data:`BackwardSolve`.
        selection: the fixed-point store's rows of this batch (``None``: no reuse).
    """

    z: Tensor
    injection: Tensor
    operator: MonotoneOperator
    activation: ProximalActivation
    frozen: FrozenOperator
    stats: SolverStats
    solve: BackwardSolve
    selection: _Selection | None = None


class Adjoint:
    """How gradients flow from the equilibrium to the parameters and the input.

    :meth:`attach` receives the :class:`Equilibrium` of a forward solve and returns ``(z_out, pre)``:
    the layer's differentiable output (equal to ``z`` within the solver's tolerance) and the
    pre-activation :math:`Wz + Ux + b` at ``z`` (kept for fixed-point reuse).
    """

    name: str = ""

    def attach(self, equilibrium: Equilibrium) -> tuple[Tensor, Tensor]:
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
    r"""The exact gradient by the implicit function theorem, solved by the layer's splitting method;
    memory does not grow with the iterations.

    The incoming :math:`g = \partial L / \partial z` becomes :math:`W^\top w + g` with
    :math:`w = D(W^\top w + g)`: the forward solve on :math:`W^\top` with the linear activation
    :math:`y \mapsto D y` (:math:`D = \operatorname{diag}\sigma'(p^\star)`), whose
    :math:`\operatorname{prox}_{\alpha f}` is :math:`y \mapsto D y / (D + \alpha (1 - D))`."""

    name = "implicit"

    def attach(self, equilibrium: Equilibrium) -> tuple[Tensor, Tensor]:
        e = equilibrium
        pre = e.operator.multiply(e.z) + e.injection
        out = e.activation(pre)
        derivative = e.activation.derivative(pre.detach())
        out.register_hook(lambda grad: self.backward(grad, derivative, e))
        return out, pre

    @staticmethod
    def backward(grad: Tensor | None, derivative: Tensor, equilibrium: Equilibrium) -> Tensor | None:
        """The gradient of the pre-activation, :math:`W^\top w + g`, for the incoming ``grad`` :math:`g`."""
        if grad is None:  # an undefined gradient stays undefined
            return grad
        if torch.is_grad_enabled():  # inside backward, grad mode is on exactly when create_graph=True
            raise DoubleBackwardError(
                "second-order gradients of the implicit monDEQ layer are not supported: its backward "
                "pass is an equilibrium solve without an autograd tape, so create_graph=True would "
                "give silently wrong higher derivatives; differentiate once (create_graph=False)"
            )
        e, d = equilibrium, derivative
        transposed = e.frozen.T
        with torch.no_grad():
            shrink = d / (d + e.frozen.alpha * (1 - d))
            warm = None if e.selection is None else e.selection.start("backward", grad)
            w, pre, e.stats.backward = e.solve(transposed, lambda y: d * y, lambda y: shrink * y, grad, warm)
            if pre is None:  # W^T w + g: the solve's final residual test computed it (one multiplication saved)
                pre = transposed.multiply(w) + grad
            if e.selection is not None:
                e.selection.keep("backward", pre)
            return pre


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

    def attach(self, equilibrium: Equilibrium) -> tuple[Tensor, Tensor]:
        e = equilibrium
        weights = e.operator.weights()  # built once for all steps
        out, first = e.z, None
        for _ in range(self.steps):
            pre = e.operator.apply_weights(out, weights) + e.injection
            first = pre if first is None else first
            step = e.activation(pre)
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
