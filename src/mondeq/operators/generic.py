r"""A monotone operator from linear maps the user already has, with a Krylov resolvent.

For *any* linear maps :math:`A` and :math:`B` of the hidden state,

.. math::
    W = (1 - m) I - A^\top A + B - B^\top, \qquad \tfrac12 (W + W^\top) = (1 - m)I - A^\top A \preceq (1 - m) I,

so :math:`I - W \succeq mI` whatever their parameters. :math:`A` may change the shape
(``nn.Linear``, ``nn.Conv1d/2d/3d`` without bias and with any padding mode, a sparse graph
propagation, a user function); :math:`B` maps the hidden state to itself. Their transposes are
vector-Jacobian products (for a linear map, the VJP *is* the transpose) unless supplied.

The resolvent :math:`(I + \alpha(I - W))^{-1}` has no structure to exploit here: it is applied
by restarted GMRES per sample (:func:`gmres`), warm-started from the previous solution, since
:math:`M = (1 + \alpha m) I + \alpha A^\top A - \alpha (B - B^\top)` is nonsymmetric with
symmetric part :math:`\succeq (1 + \alpha m) I` (GMRES converges for such :math:`M` without
restarts stalling). Forward-backward splitting needs no resolvent at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..linalg import gmres
from ..validation import POSITIVE_INT
from .base import MonotoneOperator, Resolvent

__all__ = ["OperatorFromMaps", "KrylovStats"]

Map = Callable[[Tensor], Tensor]

#: The inner GMRES of a resolvent stops at this fraction of the outer splitting's tolerance (scaled
#: by alpha / (1 + alpha)), or once it reduced its warm start's residual by :data:`INNER_REDUCTION`.
INNER_TOL_FRACTION = 0.1
INNER_REDUCTION = 0.1


@dataclass
class KrylovStats:
    """Inner solves of a Krylov resolvent since the last :meth:`reset`, and how accurate they must be.

    Attributes:
        tol: stop when the residual is below ``tol`` times the right-hand side's norm ...
        reduction: ... or below ``reduction`` times the residual of the warm start (0: off).
            A relative reduction keeps an outer splitting convergent however loose it is: the
            warm start's residual shrinks as the outer iterates settle.
        applications: resolvent applications.
        iterations: GMRES iterations over all applications.
        residual: the largest final residual relative to the right-hand side.
    """

    tol: float = 1e-6
    reduction: float = 0.0
    alpha: float = 1.0  # the resolvent's step size
    applications: int = 0
    iterations: int = 0
    residual: float = 0.0

    def reset(self, tol: float | None = None, reduction: float | None = None) -> None:
        self.tol = self.tol if tol is None else tol
        self.reduction = self.reduction if reduction is None else reduction
        self.applications = self.iterations = 0
        self.residual = 0.0

    def prepare(self, outer_tol: float) -> None:
        r"""Before an outer splitting solve to ``outer_tol``: inner solves no more accurate than it needs.

        The splitting derives :math:`Wz + b` from the resolvent's output divided by :math:`\alpha`,
        so the inner tolerance is :data:`INNER_TOL_FRACTION` of ``outer_tol`` scaled by
        :math:`\alpha / (1 + \alpha)`, or a reduction of the warm start's residual by
        :data:`INNER_REDUCTION`: warm starts track the outer iterates, so the outer splitting
        converges to its tolerance even though each inner solve is loose.
        """
        self.reset(tol=INNER_TOL_FRACTION * self.alpha / (1 + self.alpha) * outer_tol, reduction=INNER_REDUCTION)


@dataclass(frozen=True)
class _MapWeights:
    """:math:`W` (``skew = +1``) or :math:`W^\top` (``skew = -1``) of an :class:`OperatorFromMaps`: the sign of
    :math:`B - B^\top`."""

    skew: int = 1

    @property
    def T(self) -> _MapWeights:
        return _MapWeights(-self.skew)


class OperatorFromMaps(MonotoneOperator):
    r"""Monotone operator :math:`W = (1 - m)I - A^\top A + B - B^\top` from the user's linear maps.

    Args:
        A: a linear map of hidden states ``(N, *hidden_shape)`` to any shape (an ``nn.Module``
            without bias, or a function).
        B: a linear map of hidden states to hidden states of the same shape.
        injection: the input injection :math:`x \mapsto Ux + b`, to ``(N, *hidden_shape)`` (may
            be affine).
        hidden_shape: the shape of one sample's hidden state, e.g. ``(channels, length)``.
        m: monotonicity margin, :math:`m > 0`.
        A_T: the transpose of ``A``, when a faster one is at hand (checked against ``A`` by an
            adjoint probe); default: vector-Jacobian products.
        B_T: the transpose of ``B``, likewise.
        restart: GMRES restart length of each resolvent application.
        max_iter: GMRES iteration cap of each resolvent application.

    Parameters of ``nn.Module`` maps are the operator's parameters (trained, and watched by the
    caches); a plain function is treated as fixed. ``A`` and ``B`` are probed once for linearity
    (:math:`F(z_1 + 2z_2) = F(z_1) + 2F(z_2)`, :math:`F(0) = 0`) and for their shapes.

    Shape:
        - Input: whatever ``injection`` takes.
        - Hidden state: flat :math:`(N, n)`, :math:`n = \prod` ``hidden_shape``; :meth:`unflatten`
          gives :math:`(N, *\text{hidden\_shape})`.
    """

    def __init__(
        self,
        A: Map,
        B: Map,
        injection: Map,
        hidden_shape: tuple[int, ...] | list[int],
        m: float = 0.1,
        A_T: Map | None = None,
        B_T: Map | None = None,
        restart: int = 20,
        max_iter: int = 200,
    ) -> None:
        super().__init__(m)
        for name, value in (("A", A), ("B", B), ("injection", injection), ("A_T", A_T), ("B_T", B_T)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be an nn.Module or a function, got {type(value).__name__}")
        if isinstance(hidden_shape, int) or not all(isinstance(s, int) and s > 0 for s in hidden_shape):
            raise TypeError(f"hidden_shape must be a tuple of positive integers, got {hidden_shape!r}")
        self.hidden_shape = tuple(hidden_shape)
        self.features = math.prod(self.hidden_shape)
        self.A, self.B, self.injection = A, B, injection
        self.A_T, self.B_T = A_T, B_T
        self.restart = POSITIVE_INT.check("restart", restart)
        self.max_iter = POSITIVE_INT.check("max_iter", max_iter)
        if next(self.parameters(), None) is None:
            raise ValueError("OperatorFromMaps needs at least one nn.Module with parameters among A, B and injection")
        self.check_maps()

    # -- checks -----------------------------------------------------------------------------
    def check_maps(self) -> None:
        """Probe ``A`` and ``B`` (and the transposes given) with random hidden states: linear, right shapes."""
        p = next(self.parameters())
        generator = torch.Generator().manual_seed(0)
        z1, z2 = (torch.randn(2, *self.hidden_shape, generator=generator).to(p) for _ in range(2))
        tol = 1e-3 if p.dtype in (torch.float16, torch.bfloat16) else 1e-4 if p.dtype == torch.float32 else 1e-9
        with torch.no_grad():
            for name, fn in (("A", self.A), ("B", self.B)):
                label = f"{name} ({type(fn).__name__})"
                try:
                    out1, out2, both, zero = fn(z1), fn(z2), fn(z1 + 2 * z2), fn(torch.zeros_like(z1))
                except Exception as error:
                    raise ValueError(f"{label} cannot take hidden states of shape {tuple(z1.shape)}: {error}") from error
                if name == "B" and tuple(out1.shape) != tuple(z1.shape):
                    raise ValueError(
                        f"{label} must map hidden states {tuple(z1.shape)} to the same shape, got {tuple(out1.shape)}"
                    )
                scale = out1.abs().max() + 2 * out2.abs().max() + torch.finfo(p.dtype).tiny
                if (both - out1 - 2 * out2).abs().max() > tol * scale or zero.abs().max() > tol * scale:
                    raise ValueError(
                        f"{label} is not linear: F(z1 + 2 z2) != F(z1) + 2 F(z2) or F(0) != 0 "
                        "(a bias or a nonlinearity); a monotone operator needs linear A and B"
                    )
                transposed = self.A_T if name == "A" else self.B_T
                if transposed is not None:  # the vector-Jacobian products need no check
                    v = torch.randn(out1.shape, generator=generator).to(p)
                    lhs, rhs = (out1 * v).sum(), (z1 * transposed(v)).sum()
                    if (lhs - rhs).abs() > tol * (lhs.abs() + rhs.abs() + 1):
                        raise ValueError(f"{name}_T is not the transpose of {label}: <{name} z, v> != <z, {name}_T v>")

    def check_input(self, x: Tensor) -> None:
        if x.dim() < 1:
            raise ValueError("OperatorFromMaps expects a batch of inputs (batch, ...), got a scalar")

    # -- structure --------------------------------------------------------------------------
    def unflatten(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *self.hidden_shape)

    def flatten(self, z: Tensor | tuple[Tensor, ...]) -> Tensor:
        if not isinstance(z, Tensor):
            raise TypeError("OperatorFromMaps's hidden state is one tensor")
        return z.reshape(z.shape[0], -1)

    def inject(self, x: Tensor) -> Tensor:
        out = self.injection(x)
        if tuple(out.shape[1:]) != self.hidden_shape or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"injection ({type(self.injection).__name__}) maps inputs {tuple(x.shape)} to {tuple(out.shape)}, "
                f"expected (batch, {', '.join(map(str, self.hidden_shape))}) = (N, *hidden_shape)"
            )
        return self.flatten(out)

    # -- W ----------------------------------------------------------------------------------
    def weights(self) -> _MapWeights:
        return _MapWeights()

    def apply_weights(self, z: Tensor, weights: _MapWeights) -> Tensor:
        r""":math:`Wz = (1-m)z - A^\top A z + s(Bz - B^\top z)`, :math:`s = \pm 1` for :math:`W` / :math:`W^\top`.

        The transposes not supplied come from one backward pass through ``A`` and ``B`` with
        cotangents :math:`(Az, s z)`: :math:`A^\top A z + s B^\top z`. With gradients enabled
        (the layer's step on the autograd tape) that pass keeps its graph, so :math:`Wz` is
        differentiable in :math:`z` and in the maps' parameters.
        """
        hidden, skew = self.unflatten(z), weights.skew
        taped = torch.is_grad_enabled()
        adjoint: Tensor | float = 0.0  # A^T A z + s B^T z
        if self.A_T is None or self.B_T is None:
            with torch.enable_grad():
                probe = torch.zeros_like(hidden) if taped else hidden.detach()
                probe.requires_grad_(True)
                outputs, cotangents = [], []
                if self.A_T is None:
                    a_probe = self.A(probe)
                    a = self.A(hidden) if taped else a_probe.detach()
                    outputs.append(a_probe)
                    cotangents.append(a)
                if self.B_T is None:
                    b_probe = self.B(probe)
                    bz = self.B(hidden) if taped else b_probe.detach()
                    outputs.append(b_probe)
                    cotangents.append(skew * hidden)
                (adjoint,) = torch.autograd.grad(outputs, probe, cotangents, create_graph=taped)
        if self.A_T is not None:
            adjoint = adjoint + self.A_T(self.A(hidden))
        if self.B_T is not None:
            bz = self.B(hidden)
            adjoint = adjoint + skew * self.B_T(hidden)
        return self.flatten((1 - self.m) * hidden - adjoint + skew * bz)

    def build_resolvent(self, weights: _MapWeights, alpha: float) -> Resolvent:
        stats = KrylovStats(tol=1e-12 if self._dtype() == torch.float64 else 1e-6, alpha=alpha)
        starts: dict[tuple[int, int], Tensor] = {}  # warm starts by (skew sign, batch size)

        def solver(w: _MapWeights) -> Callable[[Tensor], Tensor]:
            def apply(z: Tensor) -> Tensor:  # M z = (1 + alpha) z - alpha W z
                return (1 + alpha) * z - alpha * self.apply_weights(z, w)

            def solve(y: Tensor) -> Tensor:
                with torch.no_grad():
                    key = (w.skew, y.shape[0])
                    start = starts.get(key)
                    start = torch.zeros_like(y) if start is None or start.shape != y.shape else start
                    x, iterations, residual = gmres(apply, y, start, stats.tol, stats.reduction, self.restart, self.max_iter)
                    starts[key] = x
                stats.applications += 1
                stats.iterations += iterations
                stats.residual = max(stats.residual, residual)
                return x

            return solve

        return Resolvent(solver(weights), solver(weights.T), inner=stats)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def extra_repr(self) -> str:
        return f"hidden_shape={self.hidden_shape}, m={self.m}, restart={self.restart}, max_iter={self.max_iter}"
