"""The layer refuses or handles, never silently mis-handles, unusual uses (issue 9)."""

import copy
import io
import pickle

import pytest
import torch

from helpers import make_input, make_operator
from mondeq import DoubleBackwardError, MonDEQ

DOUBLE_BACKWARD = "second-order gradients of the implicit monDEQ layer are not supported"


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_double_backward_through_input_is_refused(activation):
    op = make_operator("fc", m=1.0, scale=0.4)
    layer = MonDEQ(op, activation=activation, tol=1e-10, max_iter=1000)
    x = make_input(op).requires_grad_(True)
    loss = layer(x).pow(2).sum()
    with pytest.raises(DoubleBackwardError, match=DOUBLE_BACKWARD):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_double_backward_through_parameters_and_tiers_is_refused():
    op = make_operator("multi2", m=1.0, scale=0.4)
    layer = MonDEQ(op, tol=1e-10, max_iter=1000)
    tiers = layer(make_input(op))  # gradients w.r.t. the parameters only
    with pytest.raises(DoubleBackwardError, match=DOUBLE_BACKWARD):
        torch.autograd.grad(tiers[1].pow(2).sum(), list(op.parameters()), create_graph=True)
    with pytest.raises(DoubleBackwardError, match=DOUBLE_BACKWARD):
        layer(make_input(op))[0].sum().backward(create_graph=True)


def test_first_order_grad_without_create_graph_still_works():
    op = make_operator("single", m=1.0, scale=0.4)
    layer = MonDEQ(op, tol=1e-10, max_iter=1000)
    x = make_input(op).requires_grad_(True)
    (gx,) = torch.autograd.grad(layer(x).pow(2).sum(), x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0
    assert layer.stats.backward.converged


def _edit_data_mul(p: torch.Tensor) -> None:
    p.data.mul_(0.5)


def _edit_data_copy(p: torch.Tensor) -> None:
    p.data.copy_(0.5 * p.detach())


def _edit_no_grad_mul(p: torch.Tensor) -> None:
    with torch.no_grad():
        p.mul_(0.5)


def _edit_replace_data(p: torch.Tensor) -> None:
    p.data = 0.5 * p.detach().clone()


EDITS = [_edit_data_mul, _edit_data_copy, _edit_no_grad_mul, _edit_replace_data]


def _fresh_copy(op):
    """A newly built operator of the same kind with the same parameter values."""
    fresh = make_operator(OPERATOR_OF[type(op).__name__], m=op.m)
    fresh.load_state_dict(op.state_dict())
    return fresh


OPERATOR_OF = {"FullyConnected": "fc", "SingleConv": "single", "MultiConv": "multi2"}


@pytest.mark.filterwarnings("ignore:forward-backward step size")
@pytest.mark.parametrize("edit", EDITS, ids=lambda f: f.__name__[6:])
@pytest.mark.parametrize("name", ["fc", "single", "multi2"])
@pytest.mark.parametrize("solver", ["pr", "fb"])
def test_caches_follow_parameter_edits(edit, name, solver):
    op = make_operator(name, m=1.0, scale=0.4)
    options = {"solver": solver, "alpha": 10.0 if solver == "fb" else 0.8, "tol": 1e-11, "max_iter": 5000}
    layer = MonDEQ(op, **options)
    x = make_input(op)
    layer(x)  # fills the caches
    step, lipschitz = layer.step_size(), op.lipschitz()
    edit(op.A if name == "fc" else op.A_scale)  # conv kernels enter normalised: scale their gain
    fresh = MonDEQ(_fresh_copy(op), **options)
    assert op.lipschitz() == fresh.linear.lipschitz() != lipschitz
    assert layer.step_size() == fresh.step_size()
    if solver == "fb":
        assert layer.step_size() != step  # alpha is clamped to m / L^2, which follows L
    got, expected = op.flatten(layer(x)), fresh.linear.flatten(fresh(x))
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_clear_cache_rebuilds_the_maps():
    op = make_operator("single", m=1.0, scale=0.4)
    layer = MonDEQ(op, solver="fb", alpha=0.01)
    first, lipschitz = op.frozen(0.8), op.lipschitz()
    assert op.frozen(0.8) is first
    layer.clear_cache()
    assert op._lipschitz_cache is None
    assert op.frozen(0.8) is not first
    assert op.lipschitz() == lipschitz
    op.clear_cache()
    assert op._frozen_cache is None


def _torch_save_load(layer: MonDEQ) -> MonDEQ:
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES = {
    "pickle": lambda layer: pickle.loads(pickle.dumps(layer)),
    "torch.save": _torch_save_load,
    "deepcopy": copy.deepcopy,
}


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("name", ["fc", "single", "multi2"])
@pytest.mark.parametrize("solver", ["pr", "fb"])
def test_copies_after_a_forward_give_the_same_output(how, name, solver):
    op = make_operator(name, m=1.0, scale=0.4)
    layer = MonDEQ(op, solver=solver, alpha=0.05 if solver == "fb" else 0.8, tol=1e-11, max_iter=5000)
    x = make_input(op)
    expected = op.flatten(layer(x))
    op.lipschitz()
    clone = COPIES[how](layer)
    assert clone.linear._frozen_cache is None and clone.linear._lipschitz_cache is None
    assert torch.equal(clone.linear.flatten(clone(x)), expected)
    # the copy owns its parameters: editing them leaves the original's output alone
    clone.linear.U.bias.data.add_(1.0)
    assert not torch.allclose(clone.linear.flatten(clone(x)), expected)
    assert torch.equal(op.flatten(layer(x)), expected)


@pytest.mark.parametrize("batch", [0, 1])
@pytest.mark.parametrize("anderson", [0, 3])
@pytest.mark.parametrize("solver", ["pr", "dr", "fb"])
@pytest.mark.parametrize("name", ["fc", "single", "multi2"])
def test_empty_and_single_sample_batches(name, solver, anderson, batch):
    op = make_operator(name, m=1.0, scale=0.4)
    alpha = 0.05 if solver == "fb" else 0.8
    layer = MonDEQ(op, solver=solver, alpha=alpha, anderson=anderson, tol=1e-9, max_iter=5000)
    x = make_input(op, batch=batch).requires_grad_(True)
    out = layer(x)
    tiers = out if isinstance(out, tuple) else (out,)
    expected = [(c, *s) for c, s in zip(op.channels, op.sizes)] if name != "fc" else [(op.features,)]
    assert [tuple(t.shape) for t in tiers] == [(batch, *shape) for shape in expected]
    assert layer.stats.forward.converged
    sum(t.pow(2).sum() for t in tiers).backward()
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in op.parameters())
    assert layer.stats.backward.converged
