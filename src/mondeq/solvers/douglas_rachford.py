r"""Douglas-Rachford splitting."""

from __future__ import annotations

from torch import Tensor

from .base import SplittingProblem
from .peaceman_rachford import PeacemanRachford, resolvent_half_step


class DouglasRachford(PeacemanRachford):
    r"""Douglas-Rachford splitting: the average of the Peaceman-Rachford map and the identity.

    .. math::
        z_{1/2} = (I + \alpha(I-W))^{-1}(2 z_k - u_k + \alpha b), \quad
        u_{k+1} = u_k + z_{1/2} - z_k

    Converges for every :math:`\alpha > 0` even without strong monotonicity; usually slower
    than Peaceman-Rachford on monDEQs, but more robust.
    """

    name = "dr"
    long_name = "douglas-rachford"

    def step(self, problem: SplittingProblem, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z, _, z_half, pre = resolvent_half_step(problem, state)
        return (state + z_half).sub_(z), z_half, pre
