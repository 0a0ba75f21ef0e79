r"""Peaceman-Rachford splitting."""

from __future__ import annotations

from torch import Tensor

from .base import SplittingMethod, SplittingProblem


def reflected_resolvent_step(problem: SplittingProblem, state: Tensor, z: Tensor) -> Tensor:
    r""":math:`z_{1/2} = (I + \alpha(I-W))^{-1}(2z - u + \alpha b)` shared by PR and DR."""
    assert problem.resolvent is not None
    return problem.resolvent(2 * z - state + problem.alpha * problem.injection)


class PeacemanRachford(SplittingMethod):
    r"""Peaceman-Rachford splitting on the state :math:`u`, with :math:`z = \operatorname{prox}_{\alpha f}(u)`.

    .. math::
        u_{1/2} = 2 z_k - u_k, \quad z_{1/2} = (I + \alpha(I-W))^{-1}(u_{1/2} + \alpha b), \quad
        u_{k+1} = 2 z_{1/2} - u_{1/2}

    Converges linearly for any :math:`\alpha > 0` because :math:`I - W` is strongly monotone
    (fastest near :math:`\alpha = 1/\sqrt{m L}`); each step costs one resolvent application.
    """

    name = "pr"
    needs_resolvent = True

    def readout(self, problem: SplittingProblem, state: Tensor) -> Tensor:
        return problem.prox(state)

    def step(self, problem: SplittingProblem, state: Tensor, z: Tensor, pre: Tensor) -> Tensor:
        z_half = reflected_resolvent_step(problem, state, z)
        return 2 * z_half - (2 * z - state)
