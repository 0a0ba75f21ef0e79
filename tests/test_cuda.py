"""CUDA path: same results as CPU (runs only where a GPU is present)."""

import pytest
import torch

from helpers import OPERATOR_NAMES, make_input, make_operator
from mondeq import MonDEQ

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_cuda_matches_cpu(name):
    op = make_operator(name, m=1.0, scale=0.4)
    x = make_input(op)
    layer = MonDEQ(op, tol=1e-10, max_iter=1000)
    z_cpu = op.flatten(layer(x.clone().requires_grad_(True)))
    z_cpu.sum().backward()
    grads_cpu = [p.grad.clone() for p in op.parameters()]
    op.zero_grad()
    layer.cuda()
    z_gpu = op.flatten(layer(x.cuda().requires_grad_(True)))
    z_gpu.sum().backward()
    assert torch.allclose(z_gpu.cpu(), z_cpu, atol=1e-8)
    for g_cpu, p in zip(grads_cpu, op.parameters()):
        assert torch.allclose(p.grad.cpu(), g_cpu, atol=1e-7)
