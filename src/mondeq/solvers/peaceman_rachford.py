r"""Peaceman-Rachford splitting."""

from __future__ import annotations

from torch import Tensor

from .base import SplittingMethod, SplittingProblem


def resolvent_half_step(problem: SplittingProblem, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(z, z_half, pre)`` with :math:`z = \operatorname{prox}_{\alpha f}(u)` and
    :math:`z_{1/2} = (I + \alpha(I-W))^{-1} v`, :math:`v = 2z - u + \alpha b`.

    The resolvent identity :math:`(1+\alpha) z_{1/2} - \alpha W z_{1/2} = v` gives
    :math:`W z_{1/2} + b = ((1+\alpha) z_{1/2} - v) / \alpha + b` without a multiplication.
    """
    if problem.resolvent is None:
        raise ValueError("this splitting method needs the operator's resolvent")
    a = problem.alpha
    z = problem.prox(state)
    v = 2 * z - state + a * problem.injection
    z_half = problem.resolvent(v)
    pre = ((1 + a) * z_half - v) / a + problem.injection
    return z, z_half, pre


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
    needs_resolvent = True
    exact_pre = False

    def step(self, problem: SplittingProblem, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z, z_half, pre = resolvent_half_step(problem, state)
        return 2 * z_half - (2 * z - state), z_half, pre
