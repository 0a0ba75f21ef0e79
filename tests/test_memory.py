"""A training step's memory does not grow with the number of solver iterations."""

import torch

from helpers import make_input, make_operator
from mondeq import MonDEQ
from mondeq.errors import ignore_convergence_warnings


def saved_bytes(step) -> int:
    """Bytes of all tensors autograd saves for backward while ``step`` runs its forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return total


def implicit_step(op, x, iterations):
    layer = MonDEQ(op, solver="pr", tol=1e-300, max_iter=iterations)  # never converges: runs all iterations

    def step():
        return op.flatten(layer(x)).pow(2).sum()

    with ignore_convergence_warnings():
        bytes_used = saved_bytes(step)
    assert layer.stats.forward.iterations == iterations
    assert layer.stats.backward.iterations == iterations
    return bytes_used


def unrolled_step(op, x, iterations):
    """Backpropagation through the iterations, for contrast: memory grows with them."""

    def step():
        z = torch.zeros(x.shape[0], op.features, dtype=x.dtype)
        injection = op.inject(x)
        for _ in range(iterations):
            z = torch.relu(0.5 * z + 0.5 * (op.multiply(z) + injection))
        return z.pow(2).sum()

    return saved_bytes(step)


def test_training_step_memory_is_flat_in_iterations():
    op = make_operator("multi2", scale=0.4)
    x = make_input(op, batch=4)
    short, long = implicit_step(op, x, 10), implicit_step(op, x, 100)
    assert short == long
    assert unrolled_step(op, x, 100) > 5 * unrolled_step(op, x, 10)  # the measurement sees growth
