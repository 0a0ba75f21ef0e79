r"""The implicit layer: a monotone operator equilibrium with implicit gradients."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .activations import ProximalActivation, get_activation
from .errors import ConvergenceError, ConvergenceWarning, DoubleBackwardError
from .operators.base import FrozenOperator, MonotoneOperator
from .solvers import Anderson, SolverResult, SplittingMethod, SplittingProblem, get_solver, solve

__all__ = ["MonDEQ", "SolverStats"]


@dataclass
class SolverStats:
    """Statistics of the last call of a :class:`MonDEQ` (backward fields once backward ran).

    Keys: ``alpha`` (step size used), ``forward_iterations``, ``forward_residual`` (final
    relative fixed-point residual), ``forward_seconds``, ``forward_converged``,
    ``forward_residuals`` / ``forward_times`` (residual after each iteration, and when it was
    reached), and the same ``backward_*`` keys for the implicit backward solve.
    """

    alpha: float
    forward_iterations: int
    forward_residual: float
    forward_seconds: float
    forward_converged: bool
    forward_residuals: list[float] = field(default_factory=list, repr=False)
    forward_times: list[float] = field(default_factory=list, repr=False)
    backward_iterations: int | None = None
    backward_residual: float | None = None
    backward_seconds: float | None = None
    backward_converged: bool | None = None
    backward_residuals: list[float] = field(default_factory=list, repr=False)
    backward_times: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        out = asdict(self)
        for key in ("forward_residuals", "forward_times", "backward_residuals", "backward_times"):
            out.pop(key)
        return out


class MonDEQ(nn.Module):
    r"""Monotone operator equilibrium layer :math:`z^\star = \sigma(W z^\star + Ux + b)`.

    The equilibrium is found by operator splitting with no autograd tape; gradients come from
    the implicit function theorem. With :math:`D = \operatorname{diag}\sigma'(Wz^\star + Ux + b)`
    and incoming gradient :math:`g`, the backward pass solves the linear monotone equilibrium

    .. math::
        w = D (W^\top w + g)

    with the same splitting method (:math:`D` is the prox of a convex quadratic), then
    propagates :math:`w` as the gradient of the pre-activation :math:`Wz^\star + Ux + b`.
    Memory therefore does not grow with the number of iterations. That solve runs without an
    autograd tape, so second-order gradients of the layer are not supported: a backward pass
    with ``create_graph=True`` that reaches the layer raises
    :class:`~mondeq.errors.DoubleBackwardError` instead of returning wrong values.

    Args:
        linear: a :class:`~mondeq.operators.MonotoneOperator` holding :math:`W, U, b`.
        activation: a name (``relu``, ``leaky_relu``, ``tanh``, ``sigmoid``, ``softplus``,
            ``hardtanh``) or a :class:`~mondeq.activations.ProximalActivation`.
        solver: ``"pr"`` (Peaceman-Rachford), ``"dr"`` (Douglas-Rachford) or ``"fb"``
            (forward-backward).
        alpha: step size :math:`\alpha > 0`. For ``fb`` a value above the convergence bound
            :math:`2m/L^2` is replaced by :math:`m/L^2` with a warning (an error if ``strict``).
        tol: relative fixed-point residual to stop at. ``backward_tol`` defaults to ``tol``.
        max_iter: iteration cap. ``backward_max_iter`` defaults to ``max_iter``.
        anderson: memory of Anderson acceleration on the splitting iteration (0: off).
        strict: raise :class:`~mondeq.errors.ConvergenceError` instead of warning when a solve
            does not reach its tolerance.

    Shape:
        - Input: whatever ``linear`` expects, e.g. :math:`(N, C, H, W)` for convolutions.
        - Output: the equilibrium, :math:`(N, n)` for fully connected, :math:`(N, c, s, s)` for a
          single convolution, a tuple of tiers for multi-tier convolutions.

    Attributes:
        stats: :class:`SolverStats` of the last call.

    Maps derived from the parameters (the resolvent, the Lipschitz constant for ``fb``) are
    cached and rebuilt when a parameter's value changes, however it was changed (also in place
    through ``.data``, as EMA or weight-clipping code does); :meth:`clear_cache` drops them.
    Caches are dropped when the layer is pickled or deep-copied.

    Examples::

        >>> from mondeq import MonDEQ, FullyConnected
        >>> layer = MonDEQ(FullyConnected(784, 100, m=0.1), solver="pr", tol=1e-5)
        >>> z = layer(torch.randn(8, 784))
        >>> z.shape
        torch.Size([8, 100])
    """

    def __init__(
        self,
        linear: MonotoneOperator,
        activation: str | ProximalActivation = "relu",
        solver: str | SplittingMethod = "pr",
        alpha: float = 1.0,
        tol: float = 1e-4,
        max_iter: int = 100,
        backward_tol: float | None = None,
        backward_max_iter: int | None = None,
        anderson: int = 0,
        strict: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(linear, MonotoneOperator):
            raise TypeError(f"linear must be a MonotoneOperator, got {type(linear).__name__}")
        self.linear = linear
        self.activation = get_activation(activation)
        self.method = get_solver(solver)
        self.alpha = alpha
        self.tol = tol
        self.max_iter = max_iter
        self.backward_tol = tol if backward_tol is None else backward_tol
        self.backward_max_iter = max_iter if backward_max_iter is None else backward_max_iter
        self.anderson = anderson
        self.strict = strict
        self.stats: SolverStats | None = None
        self._lipschitz_cache: tuple[int, float] | None = None

    def __setattr__(self, name: str, value) -> None:
        if name in ("alpha", "tol", "backward_tol"):
            if not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
            value = float(value)
        elif name in ("max_iter", "backward_max_iter") and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        elif name == "anderson" and (not isinstance(value, int) or value < 0):
            raise ValueError(f"anderson (memory) must be a non-negative integer, got {value!r}")
        super().__setattr__(name, value)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_lipschitz_cache"] = None
        return state

    def clear_cache(self) -> None:
        """Drop the cached Lipschitz constant and the operator's cached maps (:meth:`MonotoneOperator.clear_cache`)."""
        self._lipschitz_cache = None
        self.linear.clear_cache()

    # -- step size ------------------------------------------------------------------------
    def lipschitz(self) -> float:
        r""":math:`L = \|I - W\|_2` by power iteration, cached until ``m`` or a parameter's value changes."""
        key = self.linear.generation()
        if self._lipschitz_cache is None or self._lipschitz_cache[0] != key:
            self._lipschitz_cache = (key, self.linear.lipschitz())
        return self._lipschitz_cache[1]

    def step_size(self) -> float:
        """The step size the solver will use: ``alpha``, clamped for forward-backward."""
        if self.method.needs_resolvent:
            return self.alpha
        lipschitz = self.lipschitz()
        bound = 2 * self.linear.m / lipschitz**2
        if self.alpha < bound:
            return self.alpha
        message = (
            f"forward-backward step size alpha={self.alpha:g} exceeds its convergence bound "
            f"2m/L^2 = {bound:.4g} (m={self.linear.m:g}, L=||I-W||={lipschitz:.4g})"
        )
        if self.strict:
            raise ValueError(message)
        optimal = self.linear.m / lipschitz**2
        warnings.warn(f"{message}; using alpha=m/L^2={optimal:.4g}", stacklevel=3)
        return optimal

    # -- forward --------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        param = next(self.linear.parameters())
        if x.dtype != param.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the parameters' dtype {param.dtype}")
        if x.device != param.device:
            raise RuntimeError(f"input is on {x.device} but the parameters are on {param.device}")
        self.linear.check_input(x)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("input contains NaN or Inf values")

    def forward(self, x: Tensor, z0: Tensor | tuple[Tensor, ...] | None = None) -> Tensor | tuple[Tensor, ...]:
        self.check_input(x)
        alpha = self.step_size()
        frozen = self.linear.frozen(alpha, with_resolvent=self.method.needs_resolvent)
        injection = self.linear.inject(x)
        if z0 is None:
            start = torch.zeros_like(injection)
        else:
            start = self.linear.flatten(z0).detach().to(injection)
            if start.shape != injection.shape:
                raise ValueError(f"z0 has {tuple(start.shape)} elements, expected {tuple(injection.shape)}")
        activation = self.activation
        with torch.no_grad():
            problem = SplittingProblem(
                multiply=frozen.multiply,
                injection=injection.detach(),
                activation=activation,
                prox=lambda y: activation.prox(y, alpha),
                alpha=alpha,
                resolvent=frozen.resolvent.solve if frozen.resolvent is not None else None,
            )
            result = self._solve(problem, start, self.tol, self.max_iter)
        stats = SolverStats(
            alpha=alpha,
            forward_iterations=result.iterations,
            forward_residual=result.residual,
            forward_seconds=result.seconds,
            forward_converged=result.converged,
            forward_residuals=result.residuals,
            forward_times=result.times,
        )
        self.stats = stats
        self._check(result, "forward", self.tol)
        z = result.z
        if torch.is_grad_enabled() and injection.requires_grad:
            pre = self.linear.multiply(z) + injection
            z = activation(pre)
            derivative = activation.derivative(pre.detach())
            z.register_hook(lambda grad: self._implicit_backward(grad, derivative, frozen, stats))
        return self.linear.unflatten(z)

    def _implicit_backward(
        self, grad: Tensor | None, derivative: Tensor, frozen: FrozenOperator, stats: SolverStats
    ) -> Tensor | None:
        r"""Turn :math:`g = \partial L / \partial z` into :math:`(I - W^\top D)^{-1} g`."""
        if grad is None:  # an undefined gradient stays undefined
            return grad
        if torch.is_grad_enabled():  # inside backward, grad mode is on exactly when create_graph=True
            raise DoubleBackwardError(
                "second-order gradients of the implicit monDEQ layer are not supported: its backward "
                "pass is an equilibrium solve without an autograd tape, so create_graph=True would "
                "give silently wrong higher derivatives; differentiate once (create_graph=False)"
            )
        alpha = frozen.alpha
        d = derivative
        with torch.no_grad():
            # prox of alpha * f for the linear "activation" y -> d * y: y -> d y / (d + alpha (1 - d))
            shrink = d / (d + alpha * (1 - d))
            problem = SplittingProblem(
                multiply=frozen.multiply_transpose,
                injection=grad,
                activation=lambda y: d * y,
                prox=lambda y: shrink * y,
                alpha=alpha,
                resolvent=frozen.resolvent.solve_transpose if frozen.resolvent is not None else None,
            )
            result = self._solve(problem, torch.zeros_like(grad), self.backward_tol, self.backward_max_iter)
            stats.backward_iterations = result.iterations
            stats.backward_residual = result.residual
            stats.backward_seconds = result.seconds
            stats.backward_converged = result.converged
            stats.backward_residuals = result.residuals
            stats.backward_times = result.times
            self._check(result, "backward", self.backward_tol)
            return frozen.multiply_transpose(result.z) + grad

    def _solve(self, problem: SplittingProblem, start: Tensor, tol: float, max_iter: int) -> SolverResult:
        accelerator = Anderson(self.anderson) if self.anderson else None
        return solve(self.method, problem, start, tol, max_iter, accelerator)

    def _check(self, result: SolverResult, direction: str, tol: float) -> None:
        if result.converged:
            return
        message = (
            f"monDEQ {direction} solve ({self.method.name}) "
            f"{result.status.value}: relative residual {result.residual:.3e} > tol {tol:g} after "
            f"{result.iterations} iterations"
        )
        if self.strict:
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=3)

    def extra_repr(self) -> str:
        return (
            f"solver={self.method.name}, alpha={self.alpha}, tol={self.tol}, max_iter={self.max_iter}, "
            f"anderson={self.anderson}, strict={self.strict}"
        )
