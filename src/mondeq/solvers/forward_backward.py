r"""Forward-backward splitting."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SplittingMethod, SplittingProblem


class ForwardBackward(SplittingMethod):
    r"""Forward-backward splitting (projected gradient-like iteration).

    .. math::
        z_{k+1} = \operatorname{prox}_{\alpha f}\big((1 - \alpha) z_k + \alpha (W z_k + b)\big)

    The multiplication :math:`W z_k` serves both the step and the residual of :math:`z_k`.
    Converges linearly for :math:`0 < \alpha < 2m / L^2`, :math:`L = \|I - W\|_2`, fastest
    near :math:`\alpha = m / L^2`. Needs no resolvent, but the bound on :math:`\alpha` makes it
    slow when :math:`m` is small relative to :math:`L` (the common case after training).
    """

    name = "fb"
    long_name = "forward-backward"

    def step(self, problem: SplittingProblem, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pre = problem.multiply(state) + problem.injection
        return problem.prox(torch.lerp(state, pre, problem.alpha)), state, pre
