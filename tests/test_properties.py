"""Property-based test of the public API: every call gives a sound result or a documented error.

Sound: the output has the right shape and is finite, a converged solve at a tight tolerance
satisfies :math:`z = \\sigma(Wz + Ux + b)` under the operator's own multiplication, and the
gradients are finite. Documented errors: ``ValueError`` for invalid arguments,
:class:`~mondeq.errors.ConvergenceError` in strict mode, :class:`~mondeq.errors.ConvergenceWarning`
otherwise (then the output may be non-finite only if the solve diverged).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mondeq import ConvergenceError, ConvergenceWarning, FullyConnected, MonDEQ, MultiConv, SingleConv
from mondeq.activations import ACTIVATIONS
from mondeq.operators import MonotoneOperator

INVALID = [0.0, -1.0, math.inf, math.nan]


def mostly(good: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    """``good`` nine times in ten, else one of the invalid values."""
    return st.integers(0, 9).flatmap(lambda k: st.sampled_from(INVALID) if k == 9 else good)


margins = mostly(st.floats(0.05, 5.0))
step_sizes = mostly(st.one_of(st.floats(0.01, 10.0), st.sampled_from([1e-6, 1e6, 1e39, 1e300])))
tolerances = mostly(st.sampled_from([1e-10, 1e-6, 1e-3, 0.5]))


def valid(value: float) -> bool:
    return value > 0 and math.isfinite(value)


@st.composite
def operators(draw: st.DrawFn) -> tuple[Callable[[float], MonotoneOperator], tuple[int, ...]]:
    """A constructor of an operator from ``m``, and the shape of one input sample."""
    kind = draw(st.sampled_from(["fc", "single", "multi"]))
    if kind == "fc":
        in_features, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        return (lambda m: FullyConnected(in_features, width, m=m)), (in_features,)
    tiers = 1 if kind == "single" else draw(st.integers(1, 3))
    kernel = draw(st.sampled_from([1, 3] if tiers < 3 else [1]))  # three tiers of side >= 3 need 12 pixels
    sides = [
        s for s in range(kernel, 9) if all(s // 2**i >= kernel and (i + 1 == tiers or (s // 2**i) % 2 == 0) for i in range(tiers))
    ]
    size = draw(st.sampled_from(sides))
    in_channels = draw(st.integers(1, 3))
    channels = tuple(draw(st.lists(st.integers(1, 4), min_size=tiers, max_size=tiers)))
    if kind == "single":
        return (lambda m: SingleConv(in_channels, channels[0], size, kernel_size=kernel, m=m)), (in_channels, size, size)
    return (lambda m: MultiConv(in_channels, channels, size, kernel_size=kernel, m=m)), (in_channels, size, size)


def relative_residual(layer: MonDEQ, x: torch.Tensor, z: torch.Tensor) -> float:
    r""":math:`\|\sigma(Wz + Ux + b) - z\| / \|\sigma(Wz + Ux + b)\|` with the operator's own maps."""
    with torch.no_grad():
        image = layer.activation(layer.linear.multiply(z) + layer.linear.inject(x))
        return (torch.dist(image, z) / (image.norm() + torch.finfo(z.dtype).tiny)).item()


def diverged(caught: list[warnings.WarningMessage]) -> bool:
    return any(issubclass(w.category, ConvergenceWarning) and "diverged" in str(w.message) for w in caught)


@settings(max_examples=200, deadline=None, database=None)
@given(
    build=operators(),
    m=margins,
    alpha=step_sizes,
    tol=tolerances,
    max_iter=st.integers(1, 200),
    solver=st.sampled_from(["fb", "pr", "dr"]),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    batch=st.sampled_from([0, 1, 2, 5]),
    anderson=st.integers(0, 4),
    strict=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_call_is_sound_or_a_documented_error(
    build, m, alpha, tol, max_iter, solver, activation, dtype, batch, anderson, strict, seed
):
    make, sample_shape = build
    torch.manual_seed(seed)
    options = dict(activation=activation, solver=solver, alpha=alpha, tol=tol, max_iter=max_iter)
    try:
        layer = MonDEQ(make(m), **options, anderson=anderson, strict=strict).to(dtype)
    except ValueError:
        assert not (valid(m) and valid(alpha) and valid(tol))
        return
    assert valid(m) and valid(alpha) and valid(tol)
    op = layer.linear
    x = torch.randn(batch, *sample_shape, dtype=dtype, requires_grad=True)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = layer(x)
        except ValueError as error:  # alpha beyond the dtype; in strict mode an fb alpha above its bound
            assert (alpha > torch.finfo(dtype).max and solver != "fb") or (strict and solver == "fb"), error
            return
        except ConvergenceError:
            assert strict
            return
    tiers = out if isinstance(out, tuple) else (out,)
    if isinstance(op, FullyConnected):
        assert [t.shape for t in tiers] == [(batch, op.features)]
    else:
        assert [t.shape for t in tiers] == [(batch, c, *s) for c, s in zip(op.channels, op.sizes)]
    assert all(t.dtype == dtype for t in tiers)
    z = op.flatten(out)
    assert torch.isfinite(z).all() or diverged(caught)
    if layer.stats.forward.converged and tol <= 1e-6:
        assert relative_residual(layer, x, z) <= 10 * tol + 100 * torch.finfo(dtype).eps

    if batch == 0 or not torch.isfinite(z).all():
        return
    weight = torch.randn_like(z)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            grads = torch.autograd.grad((weight * z).sum(), [x, *op.parameters()])
        except ConvergenceError:
            assert strict
            return
    assert all(torch.isfinite(g).all() for g in grads) or diverged(caught)
