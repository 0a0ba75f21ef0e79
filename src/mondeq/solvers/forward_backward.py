r"""Forward-backward splitting."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from ..errors import StepSizeWarning
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

    def admissible_step(self, alpha: float, operator: Any, strict: bool = False) -> float:
        """``alpha`` below the convergence bound :math:`2m/L^2`; above it, :math:`m/L^2` with a
        :class:`~mondeq.errors.StepSizeWarning` (a ``ValueError`` if ``strict``). :math:`L` is the
        operator's cached :meth:`~mondeq.operators.MonotoneOperator.lipschitz`."""
        lipschitz = operator.lipschitz()
        bound = 2 * operator.m / lipschitz**2
        if alpha < bound:
            return alpha
        message = (
            f"forward-backward step size alpha={alpha:g} exceeds its convergence bound "
            f"2m/L^2 = {bound:.4g} (m={operator.m:g}, L=||I-W||={lipschitz:.4g})"
        )
        if strict:
            raise ValueError(message)
        optimal = operator.m / lipschitz**2
        warnings.warn(f"{message}; using alpha=m/L^2={optimal:.4g}", StepSizeWarning, stacklevel=4)
        return optimal

    def step(self, problem: SplittingProblem, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pre = problem.multiply(state) + problem.injection
        return problem.prox(torch.lerp(state, pre, problem.alpha)), state, pre
