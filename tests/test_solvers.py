"""Equilibria from every splitting method: fixed-point equation, agreement, uniqueness, failure modes."""

import pytest
import torch

from helpers import OPERATOR_NAMES, dense_equilibrium, make_input, make_operator
from mondeq import ConvergenceError, ConvergenceWarning, MonDEQ, SolveRecord, get_activation, get_solver
from mondeq.solvers import Anderson, SplittingProblem, Status, solve

SOLVERS = ["fb", "pr", "dr"]
ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "softplus", "hardtanh"]


def layer_for(op, solver, activation="relu", alpha=None, **kw):
    if alpha is None:
        alpha = 0.9 * op.m / (MonDEQ(op, solver="fb").lipschitz() ** 2) if solver == "fb" else 0.6
    return MonDEQ(op, activation=activation, solver=solver, alpha=alpha, tol=1e-11, max_iter=5000, **kw)


@pytest.mark.parametrize("name", OPERATOR_NAMES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_all_solvers_agree_with_dense_reference(name, activation):
    op = make_operator(name, scale=0.4)
    x = make_input(op)
    act = get_activation(activation)
    reference = dense_equilibrium(op, act, x)
    W = op.to_dense()
    b = op.inject(x).detach()
    for solver in SOLVERS:
        layer = layer_for(op, solver, activation)
        with torch.no_grad():
            z = op.flatten(layer(x))
        assert layer.stats.forward.converged
        # the fixed-point equation z = sigma(Wz + Ux + b), checked with dense algebra
        fz = act(z @ W.T + b)
        assert ((z - fz).norm() / fz.norm()).item() <= 1e-10
        assert ((z - reference).norm() / reference.norm()).item() < 1e-8, solver


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("alpha_scale", [0.5, 2.0])
def test_equilibrium_with_alpha_not_one(solver, alpha_scale):
    """prox_{alpha f} != sigma for tanh: the equilibrium must still satisfy z = tanh(Wz + b)."""
    op = make_operator("single", scale=0.4)
    x = make_input(op)
    alpha = (0.5 if solver == "fb" else 1.0) * alpha_scale
    if solver == "fb":
        alpha = alpha_scale * 0.45 * op.m / MonDEQ(op, solver="fb").lipschitz() ** 2
    layer = MonDEQ(op, activation="tanh", solver=solver, alpha=alpha, tol=1e-12, max_iter=20000)
    assert layer.step_size() == pytest.approx(alpha)
    with torch.no_grad():
        z = op.flatten(layer(x))
    W, b = op.to_dense(), op.inject(x).detach()
    assert (z - torch.tanh(z @ W.T + b)).abs().max().item() < 1e-10


@pytest.mark.parametrize("solver", SOLVERS)
def test_anderson_acceleration_reaches_the_same_equilibrium(solver):
    op = make_operator("multi2", m=0.2, scale=0.4)
    x = make_input(op)
    plain = layer_for(op, solver)
    accelerated = layer_for(op, solver, anderson=5)
    with torch.no_grad():
        z1, z2 = op.flatten(plain(x)), op.flatten(accelerated(x))
    assert accelerated.stats.forward.converged
    assert ((z1 - z2).norm() / z1.norm()).item() < 1e-9


@pytest.mark.parametrize("name", ["fc", "multi2"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_equilibrium_is_unique(name, solver):
    op = make_operator(name, scale=0.4)
    x = make_input(op)
    layer = layer_for(op, solver, "softplus")
    with torch.no_grad():
        z_zero = op.flatten(layer(x))
        z_far = op.flatten(layer(x, z0=50 * torch.randn(x.shape[0], op.features, dtype=torch.float64)))
    assert ((z_zero - z_far).norm() / z_zero.norm()).item() < 1e-9


def test_residual_history_is_the_true_fixed_point_residual():
    op = make_operator("fc", scale=0.4)
    x = make_input(op)
    layer = MonDEQ(op, solver="pr", alpha=1.0, tol=1e-8, max_iter=500)
    with torch.no_grad():
        z = layer(x)
    stats = layer.stats
    assert len(stats.forward.residuals) == stats.forward.iterations
    assert stats.forward.residuals[-1] == stats.forward.residual <= 1e-8
    fz = torch.relu(z @ op.to_dense().T + op.inject(x))
    assert stats.forward.residual == pytest.approx(((fz - z).norm() / fz.norm()).item(), rel=1e-6)


def test_stats_nest_one_record_per_direction():
    op = make_operator("fc", scale=0.4)
    x = make_input(op).requires_grad_()
    layer = MonDEQ(op, tol=1e-8, max_iter=500)
    layer(x)
    assert isinstance(layer.stats.forward, SolveRecord) and layer.stats.backward is None
    assert layer.stats.as_dict()["backward_iterations"] is None
    layer(x).sum().backward()
    stats = layer.stats
    assert stats.forward.converged and stats.backward.converged
    assert len(stats.backward.residuals) == len(stats.backward.times) == stats.backward.iterations > 0
    assert stats.as_dict() == {
        "alpha": stats.alpha,
        **{
            f"{d}_{k}": getattr(getattr(stats, d), k)
            for d in ("forward", "backward")
            for k in ("iterations", "residual", "seconds", "converged")
        },
    }


def test_flat_stats_names_are_deprecated_but_give_the_same_values():
    op = make_operator("fc", scale=0.4)
    layer = MonDEQ(op, tol=1e-8, max_iter=500)
    x = make_input(op).requires_grad_()
    layer(x)
    with pytest.warns(DeprecationWarning, match=r"stats\.backward\.iterations"):
        assert layer.stats.backward_iterations is None
    with pytest.warns(DeprecationWarning):
        assert layer.stats.backward_residuals == []
    layer(x).sum().backward()
    stats = layer.stats
    for direction in ("forward", "backward"):
        for key in ("iterations", "residual", "seconds", "converged", "residuals", "times"):
            with pytest.warns(DeprecationWarning, match=rf"use stats\.{direction}\.{key}"):
                assert getattr(stats, f"{direction}_{key}") == getattr(getattr(stats, direction), key)
    with pytest.raises(AttributeError):
        stats.forward_iterations = 3


def test_divergence_is_detected_not_reported_as_convergence():
    """A non-monotone W (=3I) makes FB blow up; the loop must stop with DIVERGED."""
    b = torch.ones(2, 4, dtype=torch.float64)
    relu = get_activation("relu")
    problem = SplittingProblem(multiply=lambda z: 1e30 * z, injection=b, activation=relu, prox=relu, alpha=1.0)
    result = solve(get_solver("fb"), problem, torch.zeros_like(b), tol=1e-6, max_iter=1000)
    assert result.status is Status.DIVERGED
    assert not result.converged
    assert result.iterations < 1000


def test_non_convergence_warns_or_raises_in_strict_mode():
    op = make_operator("fc", scale=0.4)
    x = make_input(op)
    with pytest.warns(ConvergenceWarning, match="forward solve.*max_iter"):
        MonDEQ(op, tol=1e-14, max_iter=2)(x)
    with pytest.raises(ConvergenceError, match="relative residual"):
        MonDEQ(op, tol=1e-14, max_iter=2, strict=True)(x)
    layer = MonDEQ(op, tol=1e-14, max_iter=2, backward_max_iter=2, strict=True)
    layer.tol = 1.0  # forward passes; backward cannot reach 1e-14 in 2 steps
    layer.backward_tol = 1e-14
    with pytest.raises(ConvergenceError, match="backward solve"):
        layer(x).sum().backward()


def test_forward_backward_step_above_bound_is_clamped_with_a_message():
    op = make_operator("fc", m=0.5, scale=0.4)
    layer = MonDEQ(op, solver="fb", alpha=1.0, tol=1e-8, max_iter=5000)
    L = torch.linalg.matrix_norm(torch.eye(op.features, dtype=torch.float64) - op.to_dense(), ord=2).item()
    assert layer.lipschitz() == pytest.approx(L, rel=1e-3)
    with pytest.warns(UserWarning, match=r"exceeds its convergence bound 2m/L\^2"):
        layer(make_input(op))
    assert layer.stats.alpha == pytest.approx(op.m / L**2, rel=1e-2)
    assert layer.stats.forward.converged
    strict = MonDEQ(op, solver="fb", alpha=1.0, strict=True)
    with pytest.raises(ValueError, match="convergence bound"):
        strict(make_input(op))


def test_anderson_rejects_bad_memory():
    with pytest.raises(ValueError, match="memory"):
        Anderson(0)


def test_unknown_solver_is_named():
    with pytest.raises(ValueError, match="unknown solver 'newton'"):
        get_solver("newton")


def test_final_residual_is_explicit_when_stopping_at_max_iter():
    """PR/DR derive W z from the resolvent identity; the reported final residual must not."""
    op = make_operator("single", scale=0.4)
    x = make_input(op)
    layer = MonDEQ(op, solver="pr", alpha=0.01, tol=1e-14, max_iter=3)
    with pytest.warns(ConvergenceWarning), torch.no_grad():
        z = op.flatten(layer(x))
    fz = torch.relu(z @ op.to_dense().T + op.inject(x))
    explicit = ((fz - z).norm() / fz.norm()).item()
    assert layer.stats.forward.residual == pytest.approx(explicit, rel=1e-9)
