"""The paper's monDEQ image classifiers and their named presets.

Each classifier is a :class:`~mondeq.MonDEQ` layer followed by a readout:

- ``fc``: fully connected operator on the flattened image, linear readout.
- ``single-conv``: single convolution, 4x4 average pooling, linear readout.
- ``multi-conv``: multi-tier convolution, linear readout of the coarsest tier.

Sizes follow the paper (Winston & Kolter 2020, and its public experiments) per data set;
every size is overridable. All presets use ``m = 1``, Peaceman-Rachford, ``tol = 1e-2``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .layer import MonDEQ
from .operators import FullyConnected, MultiConv, SingleConv

__all__ = ["ModelConfig", "MonDEQClassifier", "SpectralBound", "PRESET_SIZES", "MODEL_KINDS", "preset_config"]

MODEL_KINDS = ("fc", "single-conv", "multi-conv")

#: Hidden sizes per (model, data set): width for ``fc``, channels for the convolutions.
PRESET_SIZES: dict[str, dict[str, int | tuple[int, ...]]] = {
    "fc": {"mnist": 87, "fashion-mnist": 87, "cifar10": 200, "svhn": 200},
    "single-conv": {"mnist": 54, "fashion-mnist": 54, "cifar10": 81, "svhn": 81},
    "multi-conv": {"mnist": (16, 32, 32), "fashion-mnist": (16, 32, 32), "cifar10": (16, 32, 60), "svhn": (16, 32, 60)},
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a classifier (stored in checkpoints as JSON)."""

    kind: str
    in_channels: int
    image_size: int
    num_classes: int
    width: int = 87
    channels: list[int] = field(default_factory=lambda: [54])
    kernel_size: int = 3
    pool: int = 4
    m: float = 1.0
    activation: str = "relu"
    solver: str = "pr"
    alpha: float = 1.0
    tol: float = 1e-2
    max_iter: int = 300
    anderson: int = 0
    #: Spectral bound on the input injection U (None: unconstrained); see :class:`SpectralBound`.
    input_norm: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


def preset_config(kind: str, dataset: str, in_channels: int, image_size: int, num_classes: int, **overrides) -> ModelConfig:
    """The paper's configuration of ``kind`` for ``dataset``, with ``overrides`` (``None`` ignored)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; choose one of {list(MODEL_KINDS)}")
    size = PRESET_SIZES[kind].get(dataset, PRESET_SIZES[kind]["mnist"])
    config = ModelConfig(kind=kind, in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    if kind == "fc":
        config.width = int(size)  # type: ignore[arg-type]
    else:
        config.channels = [size] if isinstance(size, int) else list(size)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "channels":
            value = [int(c) for c in value]
        if not hasattr(config, key):
            raise ValueError(f"unknown model option {key!r}")
        setattr(config, key, value)
    if kind == "single-conv" and len(config.channels) != 1:
        raise ValueError(f"single-conv takes one channel count, got {config.channels}")
    return config


class SpectralBound(nn.Module):
    r"""Parametrization :math:`U \mapsto U \cdot \min(1, c / \hat\sigma(U))`, keeping :math:`\|U\| \le c`.

    :math:`\hat\sigma` is the largest singular value of the weight reshaped to
    ``(out, -1)``, tracked by one power-iteration step per training forward (as
    ``torch.nn.utils.spectral_norm``). For a dense ``U`` that is its operator norm; for a
    convolution it is a proxy. Since the Lipschitz bound of the follow-up paper is
    :math:`\|R\|\|U\|/m`, bounding :math:`\|U\|` (with a large :math:`m`) trades accuracy for a
    smaller bound. Certificates always use the true operator norm, never this estimate.
    """

    def __init__(self, bound: float, weight: Tensor) -> None:
        super().__init__()
        self.bound = float(bound)
        matrix = weight.detach().reshape(weight.shape[0], -1)
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("u", torch.randn(matrix.shape[0], generator=generator).to(matrix))
        self.register_buffer("v", torch.randn(matrix.shape[1], generator=generator).to(matrix))
        for _ in range(30):
            self._power_step(matrix)

    @torch.no_grad()
    def _power_step(self, matrix: Tensor) -> None:
        self.v.copy_(nn.functional.normalize(matrix.T @ self.u, dim=0))
        self.u.copy_(nn.functional.normalize(matrix @ self.v, dim=0))

    def forward(self, weight: Tensor) -> Tensor:
        matrix = weight.reshape(weight.shape[0], -1)
        if self.training:
            self._power_step(matrix.detach())
        sigma = self.u @ matrix @ self.v
        return weight * (self.bound / torch.clamp(sigma, min=self.bound))


class MonDEQClassifier(nn.Module):
    """A monDEQ layer and a readout to class logits.

    Shape:
        - Input: :math:`(N, C, s, s)` images.
        - Output: :math:`(N, \\text{classes})` logits.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.kind == "fc":
            operator = FullyConnected(c.in_channels * c.image_size**2, c.width, m=c.m)
            features = c.width
        elif c.kind == "single-conv":
            operator = SingleConv(c.in_channels, c.channels[0], c.image_size, kernel_size=c.kernel_size, m=c.m)
            features = c.channels[0] * (c.image_size // c.pool) ** 2
        elif c.kind == "multi-conv":
            operator = MultiConv(c.in_channels, tuple(c.channels), c.image_size, kernel_size=c.kernel_size, m=c.m)
            features = c.channels[-1] * operator.sizes[-1] ** 2
        else:
            raise ValueError(f"unknown model {c.kind!r}; choose one of {list(MODEL_KINDS)}")
        self.layer = MonDEQ(
            operator,
            activation=c.activation,
            solver=c.solver,
            alpha=c.alpha,
            tol=c.tol,
            max_iter=c.max_iter,
            anderson=c.anderson,
        )
        self.readout = nn.Linear(features, c.num_classes)
        if c.input_norm is not None:
            if not c.input_norm > 0:
                raise ValueError(f"input_norm must be > 0, got {c.input_norm}")
            parametrize.register_parametrization(operator.U, "weight", SpectralBound(c.input_norm, operator.U.weight))

    def features(self, x: Tensor) -> Tensor:
        """The pooled equilibrium fed to the readout, ``(N, features)``."""
        return self.pool(self.layer(x))

    def pool(self, z: Tensor | tuple[Tensor, ...]) -> Tensor:
        """Readout features ``(N, features)`` of a hidden state (flat or structured): 4x4 average
        pooling for single-conv, the coarsest tier for multi-conv, as is for fc."""
        if isinstance(z, Tensor) and z.dim() == 2:
            z = self.layer.linear.unflatten(z)
        if self.config.kind == "single-conv":
            z = F.avg_pool2d(z, self.config.pool)
        elif self.config.kind == "multi-conv":
            z = z[-1]
        return z.reshape(z.shape[0], -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x))
