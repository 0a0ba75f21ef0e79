r"""The implicit layer: a monotone operator equilibrium with implicit gradients."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import Tensor, nn

from . import tolerances
from .activations import ProximalActivation, get_activation
from .errors import ConvergenceError, ConvergenceWarning
from .gradients import Adjoint, Equilibrium, get_gradient
from .operators.base import FrozenOperator, MonotoneOperator
from .reuse import FixedPointStore
from .solvers import Anderson, SolverOptions, SplittingMethod, SplittingProblem, WarmStart, solve
from .stats import SolveRecord, SolverStats
from .validation import POSITIVE

__all__ = ["MonDEQ", "SolverStats"]


def _given(**values: object) -> dict[str, object]:
    """The keyword arguments that are not ``None``."""
    return {key: value for key, value in values.items() if value is not None}


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
        compiled: run each splitting iteration compiled by :func:`torch.compile` (eager, with a
            :class:`~mondeq.errors.CompileWarning`, where compiling fails).
        strict: raise :class:`~mondeq.errors.ConvergenceError` instead of warning when a solve
            does not reach its tolerance.
        gradient: how gradients are computed (:mod:`mondeq.gradients`): ``"implicit"`` (exact,
            the backward solve above), ``"phantom"`` (damped unrolled steps), ``"jacobian-free"``
            (one step, no backward solve), or an :class:`~mondeq.gradients.Adjoint`.

    The solver settings are held as two :class:`~mondeq.solvers.SolverOptions` values,
    :attr:`forward_options` and :attr:`backward_options`, changed with :meth:`configure` or, for a
    block, :meth:`options`.

    Shape:
        - Input: whatever ``linear`` expects, e.g. :math:`(N, C, H, W)` for convolutions.
        - Output: the equilibrium, :math:`(N, n)` for fully connected, :math:`(N, c, s, s)` for a
          single convolution, a tuple of tiers for multi-tier convolutions.

    Attributes:
        forward_options: :class:`~mondeq.solvers.SolverOptions` of the equilibrium solve.
        backward_options: those of the implicit backward solve (same solver, ``anderson`` and ``compiled``).
        alpha: the step size, a validated property.
        gradient: the :class:`~mondeq.gradients.Adjoint` in use.
        fixed_points: a :class:`~mondeq.reuse.FixedPointStore` whose selected examples start the
            training solves from their last equilibrium (``None``: every solve starts cold).
        stats: :class:`~mondeq.stats.SolverStats` of the last call.

    Maps derived from the parameters (the resolvent; the Lipschitz constant for ``fb``) are
    cached by the operator and rebuilt when a parameter's value changes, however it was changed (also in place
    through ``.data``, as EMA or weight-clipping code does); :meth:`clear_cache` drops them.
    Caches are dropped when the layer is pickled or deep-copied.

    Examples::

        >>> from mondeq import MonDEQ, FullyConnected
        >>> layer = MonDEQ(FullyConnected(784, 100, m=0.1), solver="pr", tol=1e-5)
        >>> z = layer(torch.randn(8, 784))
        >>> z.shape
        torch.Size([8, 100])
        >>> with layer.options(tol=1e-8, max_iter=500):
        ...     z = layer(torch.randn(8, 784))
    """

    def __init__(
        self,
        linear: MonotoneOperator,
        activation: str | ProximalActivation = "relu",
        solver: str | SplittingMethod = "pr",
        alpha: float = 1.0,
        tol: float = tolerances.LAYER,
        max_iter: int = 100,
        backward_tol: float | None = None,
        backward_max_iter: int | None = None,
        anderson: int = 0,
        compiled: bool = False,
        strict: bool = False,
        gradient: str | Adjoint = "implicit",
    ) -> None:
        super().__init__()
        if not isinstance(linear, MonotoneOperator):
            raise TypeError(f"linear must be a MonotoneOperator, got {type(linear).__name__}")
        self.linear = linear
        self.activation = get_activation(activation)
        self.forward_options = self.backward_options = SolverOptions()
        self._alpha = 1.0
        self.configure(
            solver=solver,
            alpha=alpha,
            tol=tol,
            max_iter=max_iter,
            backward_tol=backward_tol,
            backward_max_iter=backward_max_iter,
            anderson=anderson,
            compiled=compiled,
        )
        self.strict = strict
        self.gradient = get_gradient(gradient)
        self.fixed_points: FixedPointStore | None = None
        self.stats: SolverStats | None = None

    # -- settings -------------------------------------------------------------------------
    #: Solver settings, held in :attr:`forward_options` / :attr:`backward_options`: assigning one as an
    #: attribute (``layer.tol = 1e-6``) would change nothing, so it is refused.
    SOLVER_SETTINGS = frozenset(
        {"solver", "method", "tol", "max_iter", "anderson", "compiled", "backward_tol", "backward_max_iter"}
    )

    def __setattr__(self, name: str, value: object) -> None:
        if name in MonDEQ.SOLVER_SETTINGS:
            raise AttributeError(
                f"layer.{name} = ... would change nothing: use layer.configure({name}=...) for good, "
                f"or `with layer.options({name}=...):` for a block"
            )
        super().__setattr__(name, value)

    @property
    def alpha(self) -> float:
        r"""The step size :math:`\alpha`, a finite number > 0."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._alpha = POSITIVE.check("alpha", value)

    def configure(
        self,
        *,
        solver: str | SplittingMethod | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        anderson: int | None = None,
        compiled: bool | None = None,
        backward_tol: float | None = None,
        backward_max_iter: int | None = None,
        alpha: float | None = None,
    ) -> None:
        """Change the solver settings for good; arguments left ``None`` keep their value.

        ``solver``, ``anderson`` and ``compiled`` apply to both directions, ``tol`` and ``max_iter`` too unless
        ``backward_tol`` / ``backward_max_iter`` are given. Everything is validated before anything
        changes (``ValueError`` naming the argument).
        """
        forward = replace(
            self.forward_options, **_given(solver=solver, tol=tol, max_iter=max_iter, anderson=anderson, compiled=compiled)
        )
        try:
            backward = replace(
                self.backward_options,
                solver=forward.solver,
                anderson=forward.anderson,
                compiled=forward.compiled,
                **_given(
                    tol=tol if backward_tol is None else backward_tol,
                    max_iter=max_iter if backward_max_iter is None else backward_max_iter,
                ),
            )
        except (ValueError, TypeError) as error:  # tol or max_iter: name the argument given
            raise type(error)(f"backward_{error}") from None
        alpha = self._alpha if alpha is None else POSITIVE.check("alpha", alpha)
        self.forward_options, self.backward_options, self._alpha = forward, backward, alpha

    @contextmanager
    def options(self, **changes: object) -> Iterator[MonDEQ]:
        """Solver settings changed for a block, restored on leaving it (also after an exception).

        Takes the arguments of :meth:`configure`::

            with layer.options(tol=1e-6, max_iter=300):
                z = layer(x)
        """
        saved = self.forward_options, self.backward_options, self._alpha
        self.configure(**changes)
        try:
            yield self
        finally:
            self.forward_options, self.backward_options, self._alpha = saved

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["fixed_points"] = None  # training-run state, possibly gigabytes: not part of a copy
        return state

    def clear_cache(self) -> None:
        """Drop the operator's cached maps (:meth:`MonotoneOperator.clear_cache`)."""
        self.linear.clear_cache()

    def step_size(self) -> float:
        """The step size the solver will use: ``alpha``, as the splitting method admits it
        (:meth:`~mondeq.solvers.SplittingMethod.admissible_step`: forward-backward clamps it)."""
        return self.forward_options.splitting.admissible_step(self.alpha, self.linear, self.strict)

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
        # a finite sum proves every value finite in one pass (the full test only when the sum is not finite,
        # which a large finite input can also overflow to)
        if not math.isfinite(float(x.detach().sum())) and not bool(torch.isfinite(x).all()):
            raise ValueError("input contains NaN or Inf values")

    def forward(self, x: Tensor, z0: Tensor | tuple[Tensor, ...] | None = None) -> Tensor | tuple[Tensor, ...]:
        """The equilibrium for input ``x``. ``z0``, an estimate of it, starts the solve from the state whose
        fixed point it would be (one extra multiplication); by default the solve starts at zero, or,
        while :attr:`fixed_points` selects a training batch, from each example's last equilibrium."""
        self.check_input(x)
        alpha = self.step_size()
        options = self.forward_options
        frozen = self.linear.frozen(alpha, with_resolvent=options.splitting.needs_resolvent)
        injection = self.linear.inject(x)
        differentiable = torch.is_grad_enabled() and injection.requires_grad
        selection = self.fixed_points.active() if self.fixed_points is not None and differentiable else None
        activation = self.activation
        with torch.no_grad():
            warm = None if selection is None else selection.start("forward", injection)
            if z0 is not None:
                start = self.linear.flatten(z0).detach().to(injection)
                if start.shape != injection.shape:
                    raise ValueError(f"z0 has {tuple(start.shape)} elements, expected {tuple(injection.shape)}")
                warm = WarmStart(
                    frozen.multiply(start) + injection.detach(), torch.ones(len(start), dtype=torch.bool, device=start.device)
                )
            # activation.forward, not the module's __call__: its hook dispatch on every iteration costs small models
            prox = lambda y: activation.prox(y, alpha)  # noqa: E731
            z, _, record = self._solve(frozen, activation.forward, prox, injection.detach(), options, warm)
        stats = SolverStats(alpha=alpha, forward=record)
        self.stats = stats
        self._check(record, "forward", options)
        if differentiable:
            equilibrium = Equilibrium(z, injection, self.linear, activation, frozen, stats, self._backward_solve, selection)
            z, pre = self.gradient.attach(equilibrium)
            if selection is not None:
                selection.keep("forward", pre)
        return self.linear.unflatten(z)

    def _backward_solve(
        self,
        frozen: FrozenOperator,
        activation: Callable[[Tensor], Tensor],
        prox: Callable[[Tensor], Tensor],
        injection: Tensor,
        warm: WarmStart | None,
    ) -> tuple[Tensor, Tensor | None, SolveRecord]:
        """The backward solve of an adjoint (:class:`~mondeq.gradients.Implicit`): :meth:`_solve` with the
        backward settings as they are when it runs, checked like the forward solve."""
        options = self.backward_options
        w, pre, record = self._solve(frozen, activation, prox, injection, options, warm)
        self._check(record, "backward", options)
        return w, pre, record

    def _solve(
        self,
        frozen: FrozenOperator,
        activation: Callable[[Tensor], Tensor],
        prox: Callable[[Tensor], Tensor],
        injection: Tensor,
        options: SolverOptions,
        warm: WarmStart | None = None,
    ) -> tuple[Tensor, Tensor | None, SolveRecord]:
        r"""The equilibrium :math:`z = \sigma(Wz + b)` with ``frozen``'s :math:`W`, :math:`\alpha` and
        resolvent, :math:`\sigma` = ``activation`` (``prox``: :math:`\operatorname{prox}_{\alpha f}`),
        :math:`b` = ``injection``, solved as ``options`` say; :math:`Wz + b` as the final residual test
        computed it (:attr:`~mondeq.solvers.SolverResult.pre`); and the record of the solve. It starts at
        zero, or, for the rows that ``warm`` names, from the method's
        :meth:`~mondeq.solvers.SplittingMethod.warm_state` of its pre-activation estimate."""
        problem = SplittingProblem(
            multiply=frozen.multiply,
            injection=injection,
            activation=activation,
            prox=prox,
            alpha=frozen.alpha,
            resolvent=frozen.resolvent.solve if frozen.resolvent is not None else None,
        )
        method, zero = options.splitting, torch.zeros_like(injection)
        resolvent = frozen.resolvent if method.needs_resolvent else None
        if resolvent is not None:  # an iterative resolvent sets its inner accuracy from the outer tolerance
            resolvent.prepare(options.tol)
        accelerator = Anderson(options.anderson) if options.anderson else None
        state = None
        if warm is not None:
            state = torch.where(warm.rows[:, None], method.warm_state(problem, warm.pre), method.init(problem, zero))
        result = solve(method, problem, zero, options.tol, options.max_iter, accelerator, state=state, compiled=options.compiled)
        return result.z, result.pre, SolveRecord.of(result, None if resolvent is None else resolvent.inner)

    def _check(self, record: SolveRecord, direction: str, options: SolverOptions) -> None:
        if record.converged:
            return
        message = (
            f"monDEQ {direction} solve ({options.solver}) "
            f"{record.status.value}: relative residual {record.residual:.3e} > tol {options.tol:g} after "
            f"{record.iterations} iterations"
        )
        if self.strict:
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=3)

    def extra_repr(self) -> str:
        return (
            f"solver={self.forward_options.solver}, alpha={self.alpha}, tol={self.forward_options.tol}, "
            f"max_iter={self.forward_options.max_iter}, anderson={self.forward_options.anderson}, strict={self.strict}, "
            f"gradient={self.gradient!r}"
        )
