r"""The interface every monotone linear operator implements.

A monotone operator holds the parameters of :math:`W` and of the input injection
:math:`Ux + b`. The hidden state is handled as a flat tensor of shape ``(batch, features)``
so that solvers see plain vectors; :meth:`MonotoneOperator.unflatten` gives the structured
view (an image tensor, or a tuple of per-tier tensors).

Subclasses implement :meth:`weights` (the effective, differentiable weights, whose ``.T`` are
the weights of :math:`W^\top`), :meth:`apply_weights` (:math:`Wz` from given weights),
:meth:`build_resolvent` and :meth:`inject`. Everything else is derived here. Transposes are
views, as in lineax: ``weights.T``, ``resolvent.T`` and ``frozen.T`` describe :math:`W^\top`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..linalg import largest_singular_value
from ..validation import POSITIVE

__all__ = ["MonotoneOperator", "Resolvent", "FrozenOperator"]

#: Source of cache generations: unique across all operators of the process.
_generations = itertools.count(1)


class Resolvent:
    r""":math:`(I + \alpha(I - W))^{-1}`, built once and applied many times; :attr:`T` is the transpose.

    Built from both directions, so that a transposed view shares whatever either direction
    materialises lazily (e.g. adjoint factors). An iterative resolvent carries ``inner``, the
    statistics and tolerance of its inner solves (e.g. :class:`~mondeq.operators.KrylovStats`):
    :meth:`prepare` sets that tolerance before each equilibrium solve, the layer reports the statistics.
    """

    def __init__(self, solve: Callable[[Tensor], Tensor], solve_transpose: Callable[[Tensor], Tensor], inner: Any | None = None):
        self._solve = solve
        self._solve_transpose = solve_transpose
        self.inner = inner

    def solve(self, y: Tensor) -> Tensor:
        r""":math:`(I + \alpha(I - W))^{-1} y` for flat ``y`` of shape ``(batch, features)``."""
        return self._solve(y)

    def prepare(self, outer_tol: float) -> None:
        """Called before each splitting solve that uses this resolvent, with that solve's tolerance:
        an iterative resolvent decides from it how accurate its inner solves must be (``inner.prepare``);
        an exact one has nothing to do."""
        if self.inner is not None:
            self.inner.prepare(outer_tol)

    @property
    def T(self) -> Resolvent:
        r""":math:`(I + \alpha(I - W^\top))^{-1} = ((I + \alpha(I - W))^{-1})^\top`."""
        return Resolvent(self._solve_transpose, self._solve, self.inner)


@dataclass(frozen=True, eq=False)
class FrozenOperator:
    r"""Detached :math:`W`, its resolvent and the step size :math:`\alpha` of one parameter state.

    For use inside solver iterations; :attr:`T` is the same for :math:`W^\top`.

    Attributes:
        operator: the operator whose :meth:`~MonotoneOperator.apply_weights` is used.
        weights: detached weights of :math:`W` (``weights.T``: those of :math:`W^\top`).
        resolvent: :math:`(I + \alpha(I - W))^{-1}`, or ``None`` when not built.
        alpha: the step size :math:`\alpha`.
    """

    operator: MonotoneOperator
    weights: Any
    resolvent: Resolvent | None
    alpha: float

    def multiply(self, z: Tensor) -> Tensor:
        r""":math:`Wz` for flat ``z`` of shape ``(batch, features)``."""
        return self.operator.apply_weights(z, self.weights)

    @property
    def T(self) -> FrozenOperator:
        r"""The maps of :math:`W^\top`: multiply by :math:`W^\top`, resolvent :math:`(I + \alpha(I - W^\top))^{-1}`."""
        resolvent = None if self.resolvent is None else self.resolvent.T
        return replace(self, weights=self.weights.T, resolvent=resolvent)


class _Snapshot:
    """The parameters (and ``m``) of an operator at one moment, to detect any later change.

    A cheap key (data pointers, version counters, ``m``) catches replaced or tracked in-place
    updates; comparing the values with a detached copy catches in-place edits through ``.data``,
    which bump no version counter.
    """

    def __init__(self, op: MonotoneOperator) -> None:
        self.key = op.parameter_state()
        self.values = [p.detach().clone() for p in op.parameters()]
        finite = torch.stack([torch.isfinite(v).all() for v in self.values]).all() if self.values else True
        if not bool(finite):  # the equilibrium would be NaN; the guarantee needs finite weights
            name = next(n for n, p in op.named_parameters() if not bool(torch.isfinite(p).all()))
            raise ValueError(f"parameter {name!r} of the {type(op).__name__} operator holds NaN or Inf values")
        self.generation = next(_generations)

    def matches(self, op: MonotoneOperator) -> bool:
        return op.parameter_state() == self.key and all(torch.equal(p, v) for p, v in zip(op.parameters(), self.values))


class MonotoneOperator(nn.Module):
    r"""Base class of :math:`W` with :math:`I - W \succeq mI` for all parameter values.

    Maps derived from the parameters (:meth:`frozen`) are cached and rebuilt whenever a
    parameter's value or ``m`` changes, also by in-place edits through ``.data``;
    :meth:`clear_cache` drops them explicitly. Caches are not pickled or deep-copied.

    Attributes:
        m: the monotonicity margin, a finite :math:`m > 0`.
        features: hidden units per sample, :math:`n`.
    """

    features: int

    def __init__(self, m: float) -> None:
        super().__init__()
        self.m = m
        self._snapshot: _Snapshot | None = None
        self._frozen_cache: tuple[tuple[int, float, bool], FrozenOperator] | None = None
        self._lipschitz_cache: tuple[int, float] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "m":
            value = POSITIVE.check("monotonicity parameter m", value)
        super().__setattr__(name, value)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_snapshot=None, _frozen_cache=None, _lipschitz_cache=None)  # closures and stale copies
        return state

    # -- to implement -------------------------------------------------------------------
    def weights(self) -> Any:
        r"""The effective weights of :math:`W`, differentiable w.r.t. the parameters; their ``.T`` are :math:`W^\top`'s."""
        raise NotImplementedError

    def apply_weights(self, z: Tensor, weights: Any) -> Tensor:
        r""":math:`Wz` for flat ``z`` using ``weights`` (:math:`W^\top z` with ``weights.T``)."""
        raise NotImplementedError

    def build_resolvent(self, weights: Any, alpha: float) -> Resolvent:
        r"""The resolvent :math:`(I + \alpha(I - W))^{-1}` for detached ``weights``."""
        raise NotImplementedError

    def inject(self, x: Tensor) -> Tensor:
        r""":math:`Ux + b` as a flat ``(batch, features)`` tensor."""
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the problem when ``x`` has the wrong shape."""
        raise NotImplementedError

    # -- derived ------------------------------------------------------------------------
    def multiply(self, z: Tensor) -> Tensor:
        r""":math:`Wz` for flat ``z`` of shape ``(batch, features)``."""
        return self.apply_weights(z, self.weights())

    def multiply_transpose(self, z: Tensor) -> Tensor:
        r""":math:`W^\top z` for flat ``z`` of shape ``(batch, features)``."""
        return self.apply_weights(z, self.weights().T)

    def resolvent(self, alpha: float) -> Resolvent:
        r""":math:`(I + \alpha(I - W))^{-1}` for the current parameters (not differentiable)."""
        alpha = self.check_step_size(alpha)
        with torch.no_grad():
            return self.build_resolvent(self.weights(), alpha)

    def check_step_size(self, alpha: float) -> float:
        """``alpha`` as a float; ``ValueError`` unless it is > 0 and finite in the parameters' dtype."""
        dtype = next(self.parameters()).dtype
        largest = torch.finfo(dtype).max
        if not 0 < alpha <= largest:
            raise ValueError(f"step size alpha must be > 0 and at most {largest:.3g} ({dtype}), got {alpha!r}")
        return float(alpha)

    def check_margin(self) -> float:
        r"""``m``; ``ValueError`` when it is below the parameters' dtype resolution (``finfo.eps``), where
        :math:`(1 - m) I` rounds to :math:`I` and the guarantee :math:`I - W \succeq mI` is lost."""
        dtype = next(self.parameters()).dtype
        eps = torch.finfo(dtype).eps
        if self.m < eps:
            raise ValueError(
                f"monotonicity parameter m={self.m:g} is below the resolution of {dtype} ({eps:.3g}): I - W >= mI cannot hold"
            )
        return self.m

    def unflatten(self, z: Tensor) -> Tensor | tuple[Tensor, ...]:
        """The structured view of a flat hidden state."""
        return z

    def flatten(self, z: Tensor | tuple[Tensor, ...]) -> Tensor:
        """Inverse of :meth:`unflatten`."""
        return z  # type: ignore[return-value]

    def to_dense(self) -> Tensor:
        r""":math:`W` as an explicit ``(features, features)`` matrix (small sizes only)."""
        p = next(self.parameters())
        eye = torch.eye(self.features, dtype=p.dtype, device=p.device)
        with torch.no_grad():
            return self.multiply(eye).T.contiguous()

    def parameter_state(self) -> tuple:
        """A cheap key that changes when ``m`` changes or a parameter is replaced or modified
        in place by a tracked operation (edits through ``.data`` are missed: see :meth:`generation`)."""
        return (self.m, *((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters()))

    def generation(self) -> int:
        """A number, unique in the process, that changes whenever ``m`` or a parameter's value changes.

        Compares the parameters with a copy kept from the previous call (one pass over them).
        """
        if self._snapshot is None or not self._snapshot.matches(self):
            self._snapshot = _Snapshot(self)
        return self._snapshot.generation

    def clear_cache(self) -> None:
        """Drop the cached :meth:`frozen` maps; the next call rebuilds them from the parameters."""
        self._snapshot = None
        self._frozen_cache = None
        self._lipschitz_cache = None

    def frozen(self, alpha: float, with_resolvent: bool = True) -> FrozenOperator:
        r"""Detached maps of :math:`W` (``.T``: of :math:`W^\top`), cached until ``m`` or a parameter's value changes."""
        alpha = self.check_step_size(alpha)
        self.check_margin()
        dtype = next(self.parameters()).dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"a monDEQ solve needs float32 or float64 weights, got {dtype} (the resolvent's factorisation and the "
                "tolerance need them): for low-precision inference export the model (mondeq export, mondeq.export.unroll) "
                "and cast the unrolled network"
            )
        key = (self.generation(), alpha, with_resolvent)
        if self._frozen_cache is not None and self._frozen_cache[0] == key:
            return self._frozen_cache[1]
        with torch.no_grad():
            weights = self.weights()
            resolvent = self.build_resolvent(weights, alpha) if with_resolvent else None
            frozen = FrozenOperator(self, weights, resolvent, alpha)
        self._frozen_cache = (key, frozen)
        return frozen

    def lipschitz(self) -> float:
        r""":math:`L = \|I - W\|_2` (:meth:`estimate_lipschitz`), cached until ``m`` or a parameter's value changes."""
        key = self.generation()
        if self._lipschitz_cache is None or self._lipschitz_cache[0] != key:
            self._lipschitz_cache = (key, self.estimate_lipschitz())
        return self._lipschitz_cache[1]

    def estimate_lipschitz(self, iterations: int = 50) -> float:
        r"""Estimate :math:`L = \|I - W\|_2` by power iteration on :math:`(I-W)^\top(I-W)`."""
        with torch.no_grad():  # not through frozen(): that would evict the solver's cached maps
            weights = self.weights()
        p = next(self.parameters())
        generator = torch.Generator(device="cpu").manual_seed(0)
        start = torch.randn(1, self.features, generator=generator, dtype=p.dtype).to(p.device)

        def gram(v: Tensor) -> Tensor:
            u = v - self.apply_weights(v, weights)
            return u - self.apply_weights(u, weights.T)

        with torch.no_grad():
            return largest_singular_value(gram, start, iterations, tol=1e-6)

    def extra_repr(self) -> str:
        return f"features={self.features}, m={self.m}"
