"""Implicit gradients against the dense implicit-function-theorem gradient, in float64."""

import pytest
import torch

from helpers import EXTRA_OPERATORS, OPERATOR_NAMES, dense_equilibrium, make_input, make_operator
from mondeq import MonDEQ, get_activation

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "softplus", "hardtanh"]


def dense_gradients(op, activation, x, weight):
    r"""d/d(x, params) of <weight, z*> by the implicit function theorem with dense matrices.

    With pre = W z + U x + b, D = diag(sigma'(pre)): w = D (I - W^T D)^{-1} weight, and the
    gradient is that of <w, W z + U x + b> with z and w held fixed.
    """
    act = get_activation(activation)
    z = dense_equilibrium(op, act, x)
    W = op.to_dense()
    with torch.no_grad():
        pre = z @ W.T + op.inject(x)
        D = act.derivative(pre)
        eye = torch.eye(op.features, dtype=W.dtype)
        J = eye[None] - W.T[None] * D[:, None, :]  # (I - W^T D) per sample
        w = D * torch.linalg.solve(J, weight[..., None])[..., 0]
    x = x.clone().requires_grad_(True)
    surrogate = (w * (op.multiply(z) + op.inject(x))).sum()
    params = list(op.parameters())
    return torch.autograd.grad(surrogate, [x, *params])


# Forward-backward (slow to converge on random operators) on two operators keeps the suite fast;
# the extra operators run PR with an indicator and a smooth activation, DR with a smooth one.
PAPER_OPERATORS = [name for name in OPERATOR_NAMES if name not in EXTRA_OPERATORS]
CASES = [(name, solver, act) for name in PAPER_OPERATORS for solver in ("pr", "dr") for act in ACTIVATIONS]
CASES += [(name, "fb", act) for name in ("fc", "single") for act in ACTIVATIONS]
CASES += [(name, solver, act) for name in EXTRA_OPERATORS for solver, act in (("pr", "relu"), ("pr", "softplus"), ("dr", "tanh"))]


@pytest.mark.parametrize("name, solver, activation", CASES)
def test_gradients_match_dense_implicit_function_theorem(name, solver, activation):
    op = make_operator(name, m=1.0, scale=0.4)
    x = make_input(op)
    weight = torch.randn(x.shape[0], op.features, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = dense_gradients(op, activation, x, weight)

    alpha = 0.9 * op.m / op.lipschitz() ** 2 if solver == "fb" else 0.8
    layer = MonDEQ(op, activation=activation, solver=solver, alpha=alpha, tol=1e-12, max_iter=20000)
    x = x.clone().requires_grad_(True)
    z = op.flatten(layer(x))
    got = torch.autograd.grad((weight * z).sum(), [x, *op.parameters()])
    names = ["x"] + [n for n, _ in op.named_parameters()]
    for n, g, e in zip(names, got, expected):
        error = ((g - e).norm() / e.norm().clamp_min(1e-30)).item()
        assert error < 1e-6, f"{n}: relative error {error:.2e}"
    assert layer.stats.backward.converged
    assert layer.stats.backward.iterations > 0


def test_gradcheck_small_instance():
    op = make_operator("single-odd", m=1.0, scale=0.4)
    layer = MonDEQ(op, activation="softplus", solver="pr", alpha=0.8, tol=1e-13, max_iter=2000)
    x = make_input(op, batch=2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradients_through_multi_tier_tuple_output():
    op = make_operator("multi2", m=1.0, scale=0.4)
    layer = MonDEQ(op, tol=1e-10, max_iter=1000)
    x = make_input(op).requires_grad_(True)
    tiers = layer(x)
    assert isinstance(tiers, tuple) and len(tiers) == 2
    (tiers[0].sum() + 2 * tiers[1].pow(2).sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in op.parameters())


def test_no_tape_when_gradients_are_not_needed():
    op = make_operator("fc", m=1.0, scale=0.4)
    layer = MonDEQ(op)
    with torch.no_grad():
        z = layer(make_input(op))
    assert z.grad_fn is None
    assert layer.stats.backward is None
