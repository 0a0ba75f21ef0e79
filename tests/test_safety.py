"""The layer refuses or handles, never silently mis-handles, unusual uses (issue 9)."""

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
    assert layer.stats.backward_converged
