r"""Peaceman-Rachford splitting."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SplittingMethod, SplittingProblem


def resolvent_half_step(problem: SplittingProblem, state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(z, r, z_half, pre)`` with :math:`z = \operatorname{prox}_{\alpha f}(u)`, :math:`r = u - 2z`,
    :math:`z_{1/2} = (I + \alpha(I-W))^{-1}(\alpha b - r)` and :math:`pre = W z_{1/2} + b`.

    The resolvent identity :math:`(1+\alpha) z_{1/2} - \alpha W z_{1/2} = \alpha b - r` gives
    :math:`W z_{1/2} + b = ((1+\alpha) z_{1/2} + r) / \alpha` without a multiplication. Each line
    is one fused pass over the state: on CPU these passes cost as much as the resolvent itself.
    """
    if problem.resolvent is None:
        raise ValueError("this splitting method needs the operator's resolvent")
    a = problem.alpha
    z = problem.prox(state)
    r = torch.add(state, z, alpha=-2)
    z_half = problem.resolvent(problem.scaled_injection - r)
    pre = torch.add(r, z_half, alpha=1 + a).div_(a)
    return z, r, z_half, pre


class PeacemanRachford(SplittingMethod):
    r"""Peaceman-Rachford splitting on the state :math:`u`, with :math:`z = \operatorname{prox}_{\alpha f}(u)`.

    .. math::
        z_{1/2} = (I + \alpha(I-W))^{-1}(2 z_k - u_k + \alpha b), \quad
        u_{k+1} = 2 z_{1/2} - (2 z_k - u_k)

    Converges linearly for any :math:`\alpha > 0` because :math:`I - W` is strongly monotone
    (fastest near :math:`\alpha = 1/\sqrt{m L}`). Each step costs one resolvent application and
    no multiplication: the residual is measured at :math:`z_{1/2}`.
    """

    name = "pr"
    long_name = "peaceman-rachford"
    needs_resolvent = True
    exact_pre = False

    def step(self, problem: SplittingProblem, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _, r, z_half, pre = resolvent_half_step(problem, state)
        return torch.add(r, z_half, alpha=2), z_half, pre

    def warm_state(self, problem: SplittingProblem, pre: Tensor) -> Tensor:
        r""":math:`u = (1 - \alpha)\sigma(p) + \alpha p`: at the fixed point :math:`z_{1/2} = z = \sigma(p)`, so
        :math:`2z - u = z + \alpha (I - W) z - \alpha b` and :math:`u = z - \alpha((I - W)z - b)` (also Douglas-Rachford's)."""
        return torch.lerp(problem.activation(pre), pre, problem.alpha)
