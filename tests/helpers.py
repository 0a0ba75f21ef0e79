"""Problem families shared by the tests: small random operators in float64."""

from __future__ import annotations

import torch

from mondeq import FullyConnected, MultiConv, SingleConv
from mondeq.operators import MonotoneOperator

OPERATOR_NAMES = ["fc", "single", "single-odd", "single-strided", "multi2", "multi3"]


def make_operator(name: str, m: float = 0.5, seed: int = 0, scale: float = 1.0) -> MonotoneOperator:
    """A small operator with *all* parameters replaced by random values (std ``scale``), in float64."""
    torch.manual_seed(seed)
    op = {
        "fc": lambda: FullyConnected(6, 9, m=m),
        "single": lambda: SingleConv(2, 3, 6, m=m),
        "single-odd": lambda: SingleConv(1, 2, 5, m=m),
        "single-strided": lambda: SingleConv(2, 3, 12, m=m, stride=2),  # 6 x 6 equilibrium
        "multi2": lambda: MultiConv(2, (2, 3), 8, m=m),
        "multi3": lambda: MultiConv(1, (2, 2, 2), 12, m=m),
    }[name]()
    op.double()
    with torch.no_grad():
        for p in op.parameters():
            p.copy_(scale * torch.randn_like(p))
    return op


def make_input(op: MonotoneOperator, batch: int = 3, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if isinstance(op, FullyConnected):
        shape = (batch, op.in_features)
    else:
        shape = (batch, op.in_channels, op.image_size, op.image_size)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def dense_equilibrium(op: MonotoneOperator, activation, x: torch.Tensor) -> torch.Tensor:
    """Reference equilibrium from dense linear algebra: damped fixed point, then Newton on z - s(Wz+b)."""
    with torch.no_grad():
        W = op.to_dense()
        b = op.inject(x)
        n = W.shape[0]
        eye = torch.eye(n, dtype=W.dtype)
        # Forward-backward with the safe step m / L^2 to get close, then Newton.
        L = torch.linalg.matrix_norm(eye - W, ord=2).item()
        alpha = op.m / L**2
        z = torch.zeros_like(b)
        for _ in range(300):
            z = activation.prox((1 - alpha) * z + alpha * (z @ W.T + b), alpha)
        for _ in range(100):
            pre = z @ W.T + b
            F = z - activation(pre)
            if F.abs().max() < 1e-14:
                break
            D = activation.derivative(pre)
            J = eye[None] - D[:, :, None] * W[None]
            z = z - torch.linalg.solve(J, F[..., None])[..., 0]
        return z
