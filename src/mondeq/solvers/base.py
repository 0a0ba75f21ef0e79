r"""The splitting problem, the one iteration loop shared by all methods, and its result.

Every method finds :math:`z^\star = \operatorname{prox}_f(W z^\star + b)` (with
:math:`\sigma = \operatorname{prox}_f`), i.e. a zero of :math:`F + G` where
:math:`F(z) = (I - W)z - b` is strongly monotone and :math:`G = \partial f`. A method is a
fixed-point map :math:`T` on a state :math:`u` that also yields an estimate :math:`z_k`; the
loop stops on the *true* fixed-point residual

.. math::
    r_k = \frac{\|\sigma(W z_k + b) - z_k\|}{\|\sigma(W z_k + b)\| + \epsilon},

never on the step size, and treats a non-finite residual as divergence.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .compiled import Compiled

__all__ = ["SplittingProblem", "SplittingMethod", "SolverResult", "Status", "WarmStart", "solve"]


class WarmStart(NamedTuple):
    r"""Where a solve starts for some rows of a batch: a pre-activation estimate :math:`p \approx Wz^\star + b`
    ``(batch, n)`` and the rows ``(batch,)`` (bool) that start from it (the others start at zero); see
    :meth:`SplittingMethod.warm_state`."""

    pre: Tensor
    rows: Tensor


@dataclass
class SplittingProblem:
    r"""What a method sees of an equilibrium problem :math:`z = \sigma(Wz + b)`.

    Attributes:
        multiply: :math:`z \mapsto Wz`, flat ``(batch, n)`` tensors.
        injection: :math:`b` (for a monDEQ :math:`Ux + b`), ``(batch, n)``.
        activation: :math:`\sigma = \operatorname{prox}_f`.
        prox: :math:`\operatorname{prox}_{\alpha f}`.
        alpha: the step size :math:`\alpha > 0`.
        resolvent: :math:`y \mapsto (I + \alpha(I - W))^{-1} y`, for methods that need it.
        scaled_injection: :math:`\alpha b`, computed on construction.
    """

    multiply: Callable[[Tensor], Tensor]
    injection: Tensor
    activation: Callable[[Tensor], Tensor]
    prox: Callable[[Tensor], Tensor]
    alpha: float
    resolvent: Callable[[Tensor], Tensor] | None = None
    scaled_injection: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # alpha b, computed once per solve (a plain attribute: a compiled iteration reads it without a lock)
        self.scaled_injection = self.alpha * self.injection


class Status(enum.Enum):
    CONVERGED = "converged"
    MAX_ITER = "reached max_iter before the tolerance"
    DIVERGED = "diverged (non-finite residual)"


@dataclass
class SolverResult:
    """Outcome of one solve. ``residuals[k]`` is the relative residual of the estimate of step
    ``k + 1``, reached ``times[k]`` seconds after the start. ``pre`` is :math:`Wz + b` at the returned
    ``z`` as the final residual test computed it, by a multiplication (``None`` after divergence)."""

    z: Tensor
    iterations: int
    residual: float
    status: Status
    residuals: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    seconds: float = 0.0
    pre: Tensor | None = None

    @property
    def converged(self) -> bool:
        return self.status is Status.CONVERGED


class SplittingMethod:
    """One operator-splitting method: a fixed-point map on a state, which also yields an estimate.

    ``step(problem, u)`` returns ``(T(u), z, pre)``: the mapped state, an equilibrium estimate
    ``z`` produced on the way, and ``pre = W z + b``. Methods that obtain ``pre`` without a
    multiplication (from the resolvent identity) set ``exact_pre = False``; the loop then
    confirms convergence with one explicit multiplication.
    """

    name: str = ""  # the registry key (``"pr"``); a subclass with a name is registered by its module
    long_name: str = ""  # an alias (``"peaceman-rachford"``)
    needs_resolvent: bool = False
    exact_pre: bool = True

    def init(self, problem: SplittingProblem, z0: Tensor) -> Tensor:
        """The initial state for the initial iterate ``z0``."""
        return z0

    def admissible_step(self, alpha: float, operator: Any, strict: bool = False) -> float:
        """The step size this method uses for ``alpha`` on ``operator`` (a
        :class:`~mondeq.operators.MonotoneOperator`): ``alpha`` itself for methods that converge for
        every :math:`\alpha > 0`."""
        return alpha

    def warm_state(self, problem: SplittingProblem, pre: Tensor) -> Tensor:
        r"""The state whose estimate is :math:`\sigma(p)` for a pre-activation estimate :math:`p \approx Wz^\star + b`:
        the method's fixed point when :math:`p` is exact, so a solve started there stops after one step.
        Forward-backward's state is :math:`z` itself, :math:`\sigma(p)`."""
        return problem.activation(pre)

    def step(self, problem: SplittingProblem, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError


def residual_norms(z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
    """``(||fz - z||, ||fz||)`` as 0-dimensional tensors: two tensor operations."""
    # torch.linalg.vector_norm, not Tensor.norm: the latter's Python wrapper costs more than the norm here
    return torch.dist(fz, z), torch.linalg.vector_norm(fz)


def relative_residual(z: Tensor, fz: Tensor) -> float:
    """``||fz - z|| / ||fz||`` (0 when both vanish)."""
    return residual_ratio(*residual_norms(z, fz))


def residual_ratio(distance: Tensor, norm: Tensor) -> float:
    """``distance / norm`` divided on the host (0 when ``distance`` is): the norms as tensors, so that small
    problems, where each operation's dispatch costs more than its arithmetic, stay cheap."""
    distance_, norm_ = float(distance), float(norm)
    return distance_ / (norm_ + torch.finfo(norm.dtype).tiny) if distance_ else 0.0


def iterate(method: SplittingMethod, problem: SplittingProblem, state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""One step of ``method`` from the state :math:`u_k` and the norms of its estimate's residual:
    :math:`(T(u_k), z_k, p_k, \|\sigma(p_k) - z_k\|, \|\sigma(p_k)\|)` with :math:`p_k = W z_k + b`, the norms
    as 0-dimensional tensors (read on the host by the caller, once)."""
    mapped, z, pre = method.step(problem, state)
    return mapped, z, pre, *residual_norms(z, problem.activation(pre))


#: :func:`iterate` compiled, one per process (``solve(..., compiled=True)``).
COMPILED_ITERATE = Compiled(iterate, "the splitting iteration")


def solve(
    method: SplittingMethod,
    problem: SplittingProblem,
    z0: Tensor,
    tol: float,
    max_iter: int,
    accelerator: Callable[[Tensor, Tensor], Tensor] | None = None,
    state: Tensor | None = None,
    compiled: bool = False,
) -> SolverResult:
    """Iterate ``method`` from ``z0`` until the relative residual is ``<= tol`` or ``max_iter`` steps.

    ``accelerator(state, mapped_state)``, when given (e.g. :class:`~mondeq.solvers.Anderson`),
    replaces each new state by an extrapolated one. ``state``, when given, is the initial state
    itself (a warm start, :meth:`SplittingMethod.warm_state`) instead of ``method.init(problem, z0)``.
    ``compiled`` runs each iteration (:func:`iterate`) through :func:`torch.compile` (:data:`COMPILED_ITERATE`).
    """
    if method.needs_resolvent and problem.resolvent is None:
        raise ValueError(f"splitting method {method.name!r} needs the operator's resolvent")
    start = time.perf_counter()
    state = method.init(problem, z0) if state is None else state
    residuals: list[float] = []
    times: list[float] = []
    status = Status.MAX_ITER
    iterations = 0
    step = COMPILED_ITERATE if compiled else iterate
    while True:
        mapped, z, pre, distance, norm = step(method, problem, state)
        iterations += 1
        residual = residual_ratio(distance, norm)
        if not method.exact_pre and (residual <= tol or iterations >= max_iter):
            # Confirm with an explicit multiplication: the derived pre-activation carries a
            # rounding error of about eps / alpha, which must neither fake nor hide convergence.
            pre = problem.multiply(z) + problem.injection
            residual = relative_residual(z, problem.activation(pre))
        residuals.append(residual)
        times.append(time.perf_counter() - start)
        if not math.isfinite(residual):
            status = Status.DIVERGED
            break
        if residual <= tol:
            status = Status.CONVERGED
            break
        if iterations >= max_iter:
            break
        state = accelerator(state, mapped) if accelerator is not None else mapped
    return SolverResult(
        z=z,
        iterations=iterations,
        residual=residuals[-1],
        status=status,
        residuals=residuals,
        times=times,
        seconds=time.perf_counter() - start,
        pre=pre if status is not Status.DIVERGED else None,
    )
