"""Problem families shared by the tests: small random operators in float64."""

from __future__ import annotations

import math

import torch
from torch import nn

from mondeq import FullyConnected, MultiConv, OperatorFromMaps, SingleConv
from mondeq.models import ModelConfig, MonDEQClassifier
from mondeq.operators import MonotoneOperator
from mondeq.train import TrainConfig

#: Operators added for shapes and map kinds beyond the paper's; the heaviest parametrised tests
#: (every activation x every solver) run them on a representative subset, to keep the suite fast.
EXTRA_OPERATORS = (
    "single-nonsquare",
    "single-1d",
    "single-3d",
    "single-k5",
    "multi-nonsquare",
    "multi-k5",
    "generic-conv1d",
    "generic-linear",
)

OPERATOR_NAMES = [
    "fc",
    "single",
    "single-odd",
    "single-strided",
    "single-nonsquare",
    "single-1d",
    "single-3d",
    "single-k5",
    "multi2",
    "multi3",
    "multi-nonsquare",
    "multi-k5",
    "generic-conv1d",
    "generic-linear",
]


class Skew(nn.Module):
    """A user-written linear map: multiplication by a parameter matrix on flat hidden states."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n) / n**0.5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T


def generic_conv1d(m: float) -> OperatorFromMaps:
    """A 1-D sequence operator: A a circular Conv1d widening 3 -> 4 channels, B a zero-padded Conv1d."""
    op = OperatorFromMaps(
        A=nn.Conv1d(3, 4, 3, padding=1, padding_mode="circular", bias=False),
        B=nn.Conv1d(3, 3, 5, padding=2, bias=False),
        injection=nn.Conv1d(2, 3, 3, padding=1),
        hidden_shape=(3, 7),
        m=m,
    )
    op.input_shape = (2, 7)
    return op


def generic_linear(m: float) -> OperatorFromMaps:
    """A: nn.Linear(10 -> 6) (a low-rank A^T A), B a user module, injection nn.Linear(5 -> 10)."""
    op = OperatorFromMaps(A=nn.Linear(10, 6, bias=False), B=Skew(10), injection=nn.Linear(5, 10), hidden_shape=(10,), m=m)
    op.input_shape = (5,)
    return op


def make_operator(name: str, m: float = 0.5, seed: int = 0, scale: float = 1.0) -> MonotoneOperator:
    """A small operator with *all* parameters replaced by random values (std ``scale``), in float64."""
    torch.manual_seed(seed)
    op = {
        "fc": lambda: FullyConnected(6, 9, m=m),
        "single": lambda: SingleConv(2, 3, 6, m=m),
        "single-odd": lambda: SingleConv(1, 2, 5, m=m),
        "single-strided": lambda: SingleConv(2, 3, 12, m=m, stride=2),  # 6 x 6 equilibrium
        "single-nonsquare": lambda: SingleConv(1, 2, (5, 8), m=m),  # odd height, even width
        "single-1d": lambda: SingleConv(2, 3, (8,), m=m),  # sequences of length 8 (even: the Nyquist bin)
        "single-3d": lambda: SingleConv(1, 2, (4, 3, 5), m=m),  # 4 x 3 x 5 volumes
        "single-k5": lambda: SingleConv(2, 3, 7, kernel_size=5, m=m),  # 5 x 5 kernels on 7 x 7 images
        "multi2": lambda: MultiConv(2, (2, 3), 8, m=m),
        "multi-nonsquare": lambda: MultiConv(1, (2, 2), (12, 6), m=m),  # tiers 12x6 and 6x3
        "multi3": lambda: MultiConv(1, (2, 2, 2), 12, m=m),
        "multi-k5": lambda: MultiConv(1, (2, 2), 12, kernel_size=5, m=m),  # tiers 12 and 6, 5 x 5 kernels
        "generic-conv1d": lambda: generic_conv1d(m),
        "generic-linear": lambda: generic_linear(m),
    }[name]()
    op.double()
    with torch.no_grad():
        for p in op.parameters():
            p.copy_(scale * torch.randn_like(p))
    return op


def make_input(op: MonotoneOperator, batch: int = 3, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if hasattr(op, "input_shape"):
        shape = (batch, *op.input_shape)
    elif isinstance(op, FullyConnected):
        shape = (batch, op.in_features)
    else:
        shape = (batch, op.in_channels, *op.image_shape)
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


#: Side of the small images of the certificate tests.
SIDE = 8


def small_classifier(kind: str, seed: int = 0, width: int = 12, **options) -> MonDEQClassifier:
    """A float64 classifier on 1 x SIDE x SIDE images, 4 classes, solved to 1e-12 (eval mode)."""
    torch.manual_seed(seed)
    sizes = {"width": width, "channels": [3], "pool": 2, **options}
    config = ModelConfig(kind=kind, in_channels=1, image_size=SIDE, num_classes=4, tol=1e-12, max_iter=5000, **sizes)
    return MonDEQClassifier(config).double().eval()


def dense(linear, shape) -> torch.Tensor:
    """The matrix of a linear map on tensors of ``shape`` (columns: images of the basis vectors), float64."""
    n = math.prod(shape)
    return torch.stack([linear(e.reshape(1, *shape)).flatten() for e in torch.eye(n, dtype=torch.float64)], dim=1)


#: The hidden size of each model kind in the tests' small training runs.
RUN_SIZES = {"fc": {"width": 12}, "single-conv": {"channels": [4]}, "multi-conv": {"channels": [2, 3, 3]}}


def run_config(out, model: str = "fc", model_options: dict | None = None, **options) -> TrainConfig:
    """A small training run on the Fashion-MNIST-like files, written to ``out``: one epoch of batches of 16,
    the model's :data:`RUN_SIZES`; ``options`` and ``model_options`` (over the sizes) change any of it."""
    defaults = dict(dataset="fashion-mnist", model=model, epochs=1, batch_size=16, test_batch_size=16, out=str(out))
    return TrainConfig(**{**defaults, **options}, model_options={**RUN_SIZES.get(model, {}), **(model_options or {})})
