"""The classifier kinds: each a monotone operator, how its equilibrium is pooled for the readout, and
the paper's hidden size per data set. Adding a kind is one entry of :data:`KINDS`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..operators import FullyConnected, IntervalFullyConnected, IntervalSingleConv, MonotoneOperator, MultiConv, SingleConv
from .spectral import ConvNormBound, NormBound


class KindOptions(Protocol):
    """What a kind reads of a model's configuration (:class:`~mondeq.models.ModelConfig` has it all)."""

    in_channels: int
    image_size: int
    width: int
    channels: list[int]
    kernel_size: int
    pool: int
    stride: int
    readout: str
    m: float
    interval: bool


__all__ = ["KINDS", "MODEL_KINDS", "ClassifierKind", "pool_tiers"]


@dataclass(frozen=True)
class ClassifierKind:
    """A model kind: its monotone operator, how the equilibrium is pooled for the readout, and the
    paper's hidden size per data set (``width`` for fc, ``channels`` otherwise).

    For Lipschitz-bounded classifiers (``lipschitz``), a kind also names ``injection_bound``: the
    parametrisation that keeps the exact norm of its input injection ``U`` below a bound, and
    ``pool_norm``: the operator norm of its pooling (``None``: not supported)."""

    operator: Callable[[KindOptions], MonotoneOperator]
    pool: Callable[[KindOptions, Tensor | tuple[Tensor, ...]], Tensor]
    sizes: dict[str, int | tuple[int, ...]]
    injection_bound: Callable[[KindOptions, float], NormBound] | None = None
    pool_norm: Callable[[KindOptions], float] | None = None


KINDS: dict[str, ClassifierKind] = {
    "fc": ClassifierKind(
        operator=lambda c: (IntervalFullyConnected if c.interval else FullyConnected)(
            c.in_channels * c.image_size**2, c.width, m=c.m
        ),
        pool=lambda c, z: z,
        sizes={"mnist": 87, "fashion-mnist": 87, "cifar10": 200, "svhn": 200},
        injection_bound=lambda c, bound: NormBound(bound),
        pool_norm=lambda c: 1.0,
    ),
    "single-conv": ClassifierKind(
        operator=lambda c: (IntervalSingleConv if c.interval else SingleConv)(
            c.in_channels, c.channels[0], c.image_size, kernel_size=c.kernel_size, m=c.m, stride=c.stride
        ),
        pool=lambda c, z: F.avg_pool2d(z, c.pool),
        sizes={"mnist": 54, "fashion-mnist": 54, "cifar10": 81, "svhn": 81},
        # U is a circular convolution subsampled by the stride: its norm is exact per frequency
        injection_bound=lambda c, bound: ConvNormBound(bound, (c.image_size, c.image_size), c.stride),
        pool_norm=lambda c: 1.0 / c.pool,  # a k x k average has norm 1/k (disjoint windows)
    ),
    "multi-conv": ClassifierKind(
        operator=lambda c: MultiConv(
            c.in_channels, tuple(c.channels), c.image_size, kernel_size=c.kernel_size, m=c.m, stride=c.stride
        ),
        pool=lambda c, z: pool_tiers(z, c.readout),
        sizes={"mnist": (16, 32, 32), "fashion-mnist": (16, 32, 32), "cifar10": (16, 32, 60), "svhn": (16, 32, 60)},
        # the last tier passes unpooled, the others through averages of norm 1/2^(L-i): the stack has norm 1
        pool_norm=lambda c: 1.0,
    ),
}
MODEL_KINDS = tuple(KINDS)


def pool_tiers(tiers: tuple[Tensor, ...], readout: str) -> Tensor:
    r"""Multi-conv's readout input: the coarsest tier :math:`(N, c_L, s_L, s_L)` (``"last"``), or every
    tier :math:`i` average-pooled by :math:`2^{L-i}` to that size and stacked along the channels,
    :math:`(N, \sum_i c_i, s_L, s_L)` (``"all"``)."""
    if readout == "last":
        return tiers[-1]
    last = len(tiers) - 1
    return torch.cat([F.avg_pool2d(t, 2 ** (last - i)) if i < last else t for i, t in enumerate(tiers)], dim=1)
