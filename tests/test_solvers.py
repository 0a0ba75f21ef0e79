"""Equilibria from every splitting method: fixed-point equation, agreement, uniqueness, failure modes."""

import pytest
import torch

from helpers import EXTRA_OPERATORS, OPERATOR_NAMES, dense_equilibrium, make_input, make_operator
from mondeq import ConvergenceError, ConvergenceWarning, MonDEQ, SolveRecord, SolverOptions, get_activation, get_solver
from mondeq.solvers import Anderson, DouglasRachford, SplittingProblem, Status, solve

SOLVERS = ["fb", "pr", "dr"]
ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "softplus", "hardtanh"]


def layer_for(op, solver, activation="relu", alpha=None, **kw):
    """A layer solving to 1e-11. Forward-backward at its safe step m / L^2 needs about a thousand
    iterations here, so it runs with Anderson acceleration, which keeps its fixed point (the
    equilibrium) and takes a fifth of them; plain FB iterations are tested elsewhere."""
    if alpha is None:
        alpha = 0.9 * op.m / (op.lipschitz() ** 2) if solver == "fb" else 0.6
    kw.setdefault("anderson", 5 if solver == "fb" else 0)
    return MonDEQ(op, activation=activation, solver=solver, alpha=alpha, tol=1e-11, max_iter=5000, **kw)


CASES = [(name, act) for name in OPERATOR_NAMES if name not in EXTRA_OPERATORS for act in ACTIVATIONS]
CASES += [(name, act) for name in EXTRA_OPERATORS for act in ("relu", "tanh")]


@pytest.mark.parametrize("name, activation", CASES)
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
        alpha = alpha_scale * 0.45 * op.m / op.lipschitz() ** 2
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
    plain = layer_for(op, solver, anderson=0)
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


def test_stats_have_one_name_per_value():
    op = make_operator("fc", scale=0.4)
    layer = MonDEQ(op, tol=1e-8, max_iter=500)
    layer(make_input(op).requires_grad_()).sum().backward()
    for direction in ("forward", "backward"):
        assert isinstance(getattr(layer.stats, direction).iterations, int)
        assert not hasattr(layer.stats, f"{direction}_iterations")  # no flat aliases


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
    layer = MonDEQ(op, tol=1e-14, max_iter=200, backward_max_iter=2, strict=True)
    layer.configure(tol=1e-3, backward_tol=1e-14)  # forward converges; backward cannot reach 1e-14 in 2 steps
    with pytest.raises(ConvergenceError, match="backward solve"):
        layer(x).sum().backward()


def test_options_are_values_with_separate_directions():
    layer = MonDEQ(make_operator("fc"), solver="dr", tol=1e-3, max_iter=50, backward_tol=1e-5, anderson=2)
    assert layer.forward_options == SolverOptions("douglas-rachford", tol=1e-3, max_iter=50, anderson=2)
    assert layer.backward_options == SolverOptions("dr", tol=1e-5, max_iter=50, anderson=2)
    assert layer.forward_options.solver == "dr" and isinstance(layer.forward_options.splitting, DouglasRachford)
    options = layer.forward_options
    assert (options.tol, options.max_iter, options.anderson) == (1e-3, 50, 2)
    assert (layer.backward_options.tol, layer.backward_options.max_iter) == (1e-5, 50)
    with pytest.raises(AttributeError):
        layer.forward_options.tol = 0.5  # frozen: replace, don't mutate


def test_configure_changes_both_directions_unless_backward_is_given():
    layer = MonDEQ(make_operator("fc"), tol=1e-3, backward_tol=1e-5)
    layer.configure(solver="fb", tol=1e-6, max_iter=300, alpha=0.25)
    assert layer.backward_options == layer.forward_options == SolverOptions("fb", tol=1e-6, max_iter=300)
    assert layer.alpha == 0.25
    layer.configure(backward_tol=1e-8, backward_max_iter=20, anderson=3)
    assert layer.forward_options == SolverOptions("fb", tol=1e-6, max_iter=300, anderson=3)
    assert layer.backward_options == SolverOptions("fb", tol=1e-8, max_iter=20, anderson=3)
    layer.alpha = 2  # the trainer tunes alpha by assignment
    assert layer.alpha == 2.0
    with pytest.raises(ValueError, match="alpha must be a positive finite number"):
        layer.alpha = 0.0


def test_options_apply_inside_the_block_and_are_restored_after_an_exception():
    op = make_operator("fc", scale=0.4)
    x = make_input(op)
    layer = MonDEQ(op, tol=1e-4, max_iter=100, backward_tol=1e-5)
    before = layer.forward_options, layer.backward_options, layer.alpha
    with pytest.raises(RuntimeError, match="inside"), layer.options(solver="dr", tol=1e-10, max_iter=500, alpha=0.5):
        assert layer.forward_options == layer.backward_options == SolverOptions("dr", tol=1e-10, max_iter=500)
        layer(x)
        assert layer.stats.alpha == 0.5 and layer.stats.forward.residual <= 1e-10
        raise RuntimeError("inside")
    assert (layer.forward_options, layer.backward_options, layer.alpha) == before
    with layer.options(backward_tol=1e-9) as same:
        assert same is layer and layer.forward_options == before[0] and layer.backward_options.tol == 1e-9
    assert layer.backward_options == before[1]


def test_settings_change_only_through_configure_or_options():
    layer = MonDEQ(make_operator("fc"), tol=1e-3, max_iter=50, backward_tol=1e-5, backward_max_iter=60)
    for name in ("tol", "max_iter", "method", "solver", "anderson", "backward_tol", "backward_max_iter"):
        assert not hasattr(layer, name)  # read them from layer.forward_options / backward_options
    layer.configure(tol=1e-4, backward_tol=1e-5)
    assert layer.forward_options == SolverOptions("pr", tol=1e-4, max_iter=50)
    assert layer.backward_options == SolverOptions("pr", tol=1e-5, max_iter=60)
    with pytest.raises(ValueError, match="max_iter must be a positive integer"):
        layer.configure(max_iter=0)
    for name in ("tol", "max_iter", "method", "solver", "anderson", "backward_tol", "backward_max_iter"):
        with pytest.raises(AttributeError, match=rf"layer.{name} = \.\.\. would change nothing: use layer.configure"):
            setattr(layer, name, 1)  # users of other DEQ libraries write this: it must not pass silently
    assert layer.forward_options == SolverOptions("pr", tol=1e-4, max_iter=50)


def test_forward_backward_step_above_bound_is_clamped_with_a_message():
    op = make_operator("fc", m=0.5, scale=0.4)
    layer = MonDEQ(op, solver="fb", alpha=1.0, tol=1e-8, max_iter=5000)
    L = torch.linalg.matrix_norm(torch.eye(op.features, dtype=torch.float64) - op.to_dense(), ord=2).item()
    assert op.lipschitz() == pytest.approx(L, rel=1e-3)
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


@pytest.mark.parametrize("solver", ["fb", "pr", "dr"])
def test_result_pre_is_the_explicit_preactivation_at_z(solver):
    """The pre-activation a solve returns (the backward pass reuses it as W^T w + g) is W z + b at its z,
    computed by a multiplication: not the resolvent identity's derived estimate."""
    torch.manual_seed(0)
    op = make_operator("single", scale=0.4).double()
    x = make_input(op).double()
    frozen = op.frozen(0.5)
    injection = op.inject(x).detach()
    problem = SplittingProblem(frozen.multiply, injection, torch.relu, torch.relu, 0.5, frozen.resolvent.solve)
    result = solve(get_solver(solver), problem, torch.zeros_like(injection), tol=1e-6, max_iter=500)
    assert result.converged
    torch.testing.assert_close(result.pre, result.z @ op.to_dense().T + injection, rtol=0, atol=1e-12)


def _solve_and_gradients(layer, x):
    x = x.clone().requires_grad_(True)
    z = layer(x)
    z = z if isinstance(z, torch.Tensor) else torch.cat([t.flatten(1) for t in z], 1)
    (z * torch.linspace(-1, 1, z.numel()).reshape(z.shape)).sum().backward()
    return z.detach(), x.grad, [p.grad.clone() for p in layer.parameters()], layer.stats


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fc", "single"])
def test_compiled_iteration_gives_the_eager_equilibrium_and_gradients(name):
    op = make_operator(name, scale=0.4)
    x = make_input(op)
    eager = _solve_and_gradients(MonDEQ(op, tol=1e-9, max_iter=500), x)
    op.zero_grad()
    compiled = _solve_and_gradients(MonDEQ(op, tol=1e-9, max_iter=500, compiled=True), x)
    assert compiled[3].forward.converged and compiled[3].backward.converged
    torch.testing.assert_close(compiled[0], eager[0], atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(compiled[1], eager[1], atol=1e-8, rtol=1e-7)
    for ours, theirs in zip(compiled[2], eager[2]):
        torch.testing.assert_close(ours, theirs, atol=1e-8, rtol=1e-7)
    assert abs(compiled[3].forward.iterations - eager[3].forward.iterations) <= 1


def test_a_failing_compiler_falls_back_to_the_eager_iteration_with_one_warning(monkeypatch):
    from mondeq.errors import CompileWarning
    from mondeq.solvers import base
    from mondeq.solvers.compiled import Compiled

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(base, "COMPILED_ITERATE", Compiled(base.iterate, "the splitting iteration"))
    monkeypatch.setattr(torch, "compile", broken)
    op = make_operator("fc", scale=0.4)
    x = make_input(op)
    with torch.no_grad():
        expected = MonDEQ(op, tol=1e-9)(x)
        with pytest.warns(CompileWarning, match=r"\(RuntimeError: no C\+\+ compiler found\)$") as caught:
            z = MonDEQ(op, tol=1e-9, compiled=True)(x)
            again = MonDEQ(op, tol=1e-9, compiled=True)(x)
    assert len([w for w in caught if w.category is CompileWarning]) == 1
    assert torch.equal(z, expected) and torch.equal(again, expected)


def test_compiled_option_is_a_bool_for_both_directions():
    with pytest.raises(TypeError, match="compiled must be a bool, got str"):
        SolverOptions(compiled="yes")
    layer = MonDEQ(make_operator("fc", scale=0.4))
    layer.configure(compiled=True)
    assert layer.forward_options.compiled and layer.backward_options.compiled
