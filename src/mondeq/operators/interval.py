r"""Monotone operators whose interval extension converges too (IBP-MonDEQ, Wei & Kolter, ICLR 2022).

Both operators here take :math:`W = D^{-1/2} M D^{-1/2}` with an unconstrained :math:`M` and the
positive diagonal

.. math::
    d_i = \frac{1}{2(1-m)} \Big(\sum_j |M_{ij}| + \sum_j |M_{ji}|\Big), \qquad 0 < m < 1.

**Both conditions, for every** :math:`M`. With :math:`x_i x_j / \sqrt{d_i d_j} \le \tfrac12 (x_i^2/d_i + x_j^2/d_j)`,

.. math::
    x^\top |W| x \le \sum_{ij} \frac{|M_{ij}|}{\sqrt{d_i d_j}} |x_i| |x_j|
    \le \sum_i \frac{x_i^2}{2 d_i} \Big(\sum_j |M_{ij}| + \sum_j |M_{ji}|\Big) = (1 - m) \|x\|^2 ,

so :math:`\tfrac12(|W| + |W|^\top) \preceq (1-m) I`. Hence (i) :math:`x^\top W x \le x^\top |W| x`
gives :math:`I - W \succeq mI`, as for every monotone operator here, and (ii) the spectral radius of the
nonnegative :math:`|W|` is at most :math:`1 - m` (its Perron vector :math:`v` has
:math:`\rho \|v\|^2 = v^\top |W| v`). By (ii) the interval map
:math:`[\underline z, \overline z] \mapsto \sigma(W\mu \pm |W| r + [\underline b, \overline b])`
(:math:`\mu, r` the interval's centre and radius) has a unique fixed point and its iteration converges
to it (:func:`mondeq.robust.equilibrium_box`); so does the plain iteration :math:`z \mapsto \sigma(Wz + b)`.
:math:`W` does not change when :math:`M` is scaled by a positive number.

An :class:`IntervalOperator` gives the interval iteration what it needs: :math:`W` and :math:`|W|` in the
form they are applied (:meth:`~IntervalOperator.interval_weights`), both applied to a centre and a radius
(:meth:`~IntervalOperator.interval_multiply`), the injection's box (:meth:`~IntervalOperator.interval_inject`),
and how many products each output sums (for the rounding bound of certificates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..validation import POSITIVE_INT
from .base import MonotoneOperator, Resolvent
from .convolutional import _CONV_MODULES, _CONVOLUTIONS, circular_conv, symbol, transpose_kernel
from .fourier import SpectralMap, spectral_resolvent
from .fully_connected import DenseOperator

__all__ = ["IntervalFullyConnected", "IntervalOperator", "IntervalSingleConv"]


def _check_margin(m: float) -> float:
    if not (isinstance(m, (int, float)) and 0 < m < 1):
        raise ValueError(f"the interval operator needs a margin 0 < m < 1, got {m!r}")
    return m


def _scaling(row_sums: Tensor, column_sums: Tensor, m: float) -> Tensor:
    r""":math:`d^{-1/2}` with :math:`d = (\text{row} + \text{column sums of } |M|) / (2(1-m))` (a tiny
    floor keeps an all-zero row finite: its entries of :math:`W` are zero anyway)."""
    d = (row_sums + column_sums) / (2 * (1 - m)) + torch.finfo(row_sums.dtype).tiny
    return d.rsqrt()


class IntervalOperator(MonotoneOperator):
    r"""A monotone operator with :math:`\rho(|W|) \le 1 - m` for every parameter value, and the maps the
    interval iteration uses. Flat hidden states ``(batch, features)`` throughout.

    Attributes:
        multiply_terms: products summed per entry of :math:`Wz` (and of :math:`|W| r`).
        inject_terms: products summed per entry of :math:`Ux` (the bias added after).
    """

    multiply_terms: int
    inject_terms: int

    def interval_weights(self) -> tuple[Tensor, Tensor]:
        r""":math:`W` and :math:`|W|` as :meth:`interval_multiply` applies them (differentiable)."""
        raise NotImplementedError

    def interval_multiply(self, center: Tensor, radius: Tensor, weights: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        r""":math:`(W\mu, |W| r)` for flat ``center`` :math:`\mu` and ``radius`` :math:`r`."""
        raise NotImplementedError

    def interval_inject(self, center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
        r"""Centre and radius of :math:`Ux + b` over the input box of ``center`` and ``radius`` (input
        shape): :math:`(U\mu + b, |U| r)`, flat."""
        raise NotImplementedError

    def magnitude_sums(self, magnitude: Tensor) -> Tensor:
        r"""The nonnegative matrix :math:`S` whose action on a vector :math:`v` constant on each block of
        hidden units (a channel; a single unit for dense operators) is :math:`|W|` 's: ``(blocks, blocks)``."""
        raise NotImplementedError

    def block_vector(self, v: Tensor) -> Tensor:
        """A ``(blocks,)`` vector as a flat ``(1, features)`` hidden state, constant on each block."""
        raise NotImplementedError

    @torch.no_grad()
    def contraction(self, magnitude: Tensor, iterations: int = 30) -> tuple[Tensor, float]:
        r"""A positive :math:`v` ``(1, features)`` and :math:`\kappa` with :math:`|W| v \le \kappa v`
        elementwise (:math:`v` by power iteration towards the Perron vector, so :math:`\kappa` is close
        to :math:`\rho(|W|) \le 1 - m`). Any positive :math:`v` makes :math:`\kappa` sound: it is
        :math:`\max_i (|W| v)_i / v_i`, computed, not assumed."""
        magnitude_sums = self.magnitude_sums(magnitude.detach())
        v = torch.ones(magnitude_sums.shape[0], dtype=magnitude_sums.dtype, device=magnitude_sums.device)
        for _ in range(iterations):
            v = magnitude_sums @ v
            v = v / v.max().clamp_min(torch.finfo(v.dtype).tiny)
        v = v + 1e-3  # strictly positive
        kappa = float((magnitude_sums @ v / v).max())
        return self.block_vector(v), kappa


class IntervalFullyConnected(DenseOperator, IntervalOperator):
    r"""Dense interval operator :math:`W = D^{-1/2} M D^{-1/2}` (module docstring: :math:`I - W \succeq mI`
    and :math:`\rho(|W|) \le 1 - m` for every :math:`M`). Requires :math:`0 < m < 1`.

    Args:
        in_features: size of each input sample (flattened after the batch dim).
        width: hidden units :math:`n`.
        m: monotonicity margin, :math:`0 < m < 1`.

    Attributes:
        M: ``(width, width)``, unconstrained. U: ``nn.Linear(in_features, width)``.
    """

    def __init__(self, in_features: int, width: int, m: float = 0.5) -> None:
        super().__init__(in_features, width, _check_margin(m))
        self.M = nn.Parameter(torch.empty(self.features, self.features))
        self.multiply_terms, self.inject_terms = self.features, self.in_features
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.features)
        nn.init.uniform_(self.M, -bound, bound)
        self.U.reset_parameters()

    def weights(self) -> Tensor:
        """:math:`W` as a matrix (its ``.T`` is :math:`W^\top`)."""
        magnitude = self.M.abs()
        scale = _scaling(magnitude.sum(dim=1), magnitude.sum(dim=0), self.m)
        return scale[:, None] * self.M * scale[None, :]

    def interval_weights(self) -> tuple[Tensor, Tensor]:
        weights = self.weights()
        return weights, weights.abs()

    def interval_multiply(self, center: Tensor, radius: Tensor, weights: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return F.linear(center, weights[0]), F.linear(radius, weights[1])

    def interval_inject(self, center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
        return self.U(center.flatten(1)), F.linear(radius.flatten(1), self.U.weight.abs())

    def magnitude_sums(self, magnitude: Tensor) -> Tensor:
        return magnitude

    def block_vector(self, v: Tensor) -> Tensor:
        return v[None, :]


@dataclass
class _IntervalConvWeights:
    """:math:`W` of :class:`IntervalSingleConv`: its kernel and its symbol on the real FFT's frequencies."""

    kernel: Tensor  # (c, c, k, ..., k)
    fourier: SpectralMap  # matrices (*size[:-1], size[-1] // 2 + 1, c, c)

    @property
    def T(self) -> _IntervalConvWeights:
        return _IntervalConvWeights(transpose_kernel(self.kernel), self.fourier.T)


class IntervalSingleConv(IntervalOperator):
    r"""Convolutional interval operator: :math:`M` a circular convolution of the hidden channels,
    :math:`W = D^{-1/2} M D^{-1/2}` with :math:`D` constant per channel.

    As a matrix, the circular convolution with kernel :math:`K` (``(c, c, k, ..., k)``, every side of the
    hidden signal at least :math:`k`) has in each row of channel :math:`o` the entries :math:`K_{o,i,t}`,
    one per input channel :math:`i` and tap :math:`t`, and in each column of channel :math:`i` the entries
    :math:`K_{o,i,t}` over :math:`o, t`: its absolute row and column sums are
    :math:`\sum_{i,t} |K_{o,i,t}|` and :math:`\sum_{o,t} |K_{o,i,t}|`, the same at every position. So the
    module docstring's :math:`D` is constant per channel, :math:`W` is the circular convolution with kernel
    :math:`K_{o,i} / \sqrt{d_o d_i}`, and both conditions hold for every :math:`K`: the dense proof applies
    to the convolution's matrix. Being a convolution, :math:`W` has a Fourier symbol: the resolvent is exact
    per frequency (as for :class:`~mondeq.operators.SingleConv`), while the interval iteration needs only
    convolutions by the kernel and its absolute value.

    Args:
        in_channels: channels of the input.
        channels: hidden channels :math:`c`.
        image_size: side of a square image, or the input's spatial size (1-, 2- or 3-D).
        kernel_size: odd kernel size of :math:`M` and of the injection.
        m: monotonicity margin, :math:`0 < m < 1`.
        stride: stride of the injection; the hidden signal has size ``image_size / stride``.

    Shape:
        - Input: :math:`(N, C_{in}, *S)`; hidden state flat :math:`(N, c \prod_j s_j)`, :math:`s = S / \text{stride}`;
          :meth:`unflatten` gives :math:`(N, c, *s)`.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        image_size: int | tuple[int, ...],
        kernel_size: int = 3,
        m: float = 0.5,
        stride: int = 1,
    ) -> None:
        super().__init__(_check_margin(m))
        self.in_channels = POSITIVE_INT.check("in_channels", in_channels)
        self.channels = POSITIVE_INT.check("channels", channels)
        shape = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        if not 1 <= len(shape) <= 3:
            raise ValueError(
                f"image_size must be a side, (length,), (height, width) or (depth, height, width), got {image_size!r}"
            )
        shape = tuple(POSITIVE_INT.check("image_size", side) for side in shape)
        if POSITIVE_INT.check("kernel_size", kernel_size) % 2 != 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.stride = POSITIVE_INT.check("stride", stride)
        if any(side % self.stride or side // self.stride < kernel_size for side in shape):
            raise ValueError(
                f"image_size {image_size!r} must be a multiple of the stride {self.stride} with every hidden side "
                f">= kernel_size {kernel_size}"
            )
        self.image_size = image_size if isinstance(image_size, int) else shape
        self.image_shape = shape
        self.size = tuple(side // self.stride for side in shape)
        self.kernel_size = kernel_size
        self.features = self.channels * math.prod(self.size)
        ndim = len(shape)
        self.multiply_terms = self.channels * kernel_size**ndim
        self.inject_terms = self.in_channels * kernel_size**ndim
        self.U = _CONV_MODULES[ndim](in_channels, channels, kernel_size, bias=True)
        self.M = nn.Parameter(torch.empty(channels, channels, *(kernel_size,) * ndim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.M, a=math.sqrt(5))
        self.U.reset_parameters()

    # -- structure ------------------------------------------------------------------------
    def unflatten(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], self.channels, *self.size)

    def flatten(self, z: Tensor | tuple[Tensor, ...]) -> Tensor:
        return (z if isinstance(z, Tensor) else z[0]).flatten(1)

    def check_input(self, x: Tensor) -> None:
        expected = (self.in_channels, *self.image_shape)
        if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )

    def inject(self, x: Tensor) -> Tensor:
        bias = self.U.bias.view(-1, *[1] * len(self.size))
        return (circular_conv(x, self.U.weight, stride=self.stride) + bias).flatten(1)

    # -- W --------------------------------------------------------------------------------
    def kernel(self) -> Tensor:
        r"""The kernel of :math:`W`: :math:`K_{o,i} / \sqrt{d_o d_i}` (differentiable)."""
        magnitude = self.M.abs()
        dims = tuple(range(2, self.M.dim()))
        scale = _scaling(magnitude.sum(dim=(1, *dims)), magnitude.sum(dim=(0, *dims)), self.m)
        shape = (-1,) + (1,) * len(dims)
        return scale.view(-1, 1, *shape[1:]) * self.M * scale.view(1, *shape)

    def weights(self) -> _IntervalConvWeights:
        kernel = self.kernel()
        return _IntervalConvWeights(kernel, SpectralMap(symbol(kernel, self.size, onesided=True), self.size))

    def apply_weights(self, z: Tensor, weights: _IntervalConvWeights) -> Tensor:
        return weights.fourier(z)

    def build_resolvent(self, weights: _IntervalConvWeights, alpha: float) -> Resolvent:
        return spectral_resolvent(weights.fourier, alpha)

    # -- intervals ------------------------------------------------------------------------
    def interval_weights(self) -> tuple[Tensor, Tensor]:
        kernel = self.kernel()
        return kernel, kernel.abs()

    def interval_multiply(self, center: Tensor, radius: Tensor, weights: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        # one grouped circular convolution: the centre by the kernel, the radius by its absolute value
        both = torch.cat([self.unflatten(center), self.unflatten(radius)], dim=1)
        pad = self.kernel_size // 2
        padded = F.pad(both, (pad,) * (2 * len(self.size)), mode="circular")
        out = _CONVOLUTIONS[len(self.size)](padded, torch.cat(weights, dim=0), groups=2)
        return out[:, : self.channels].flatten(1), out[:, self.channels :].flatten(1)

    def interval_inject(self, center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
        spread = circular_conv(radius, self.U.weight.abs(), stride=self.stride).flatten(1)
        return self.inject(center), spread

    def magnitude_sums(self, magnitude: Tensor) -> Tensor:
        return magnitude.sum(dim=tuple(range(2, magnitude.dim())))  # each output channel sums over taps

    def block_vector(self, v: Tensor) -> Tensor:
        return v.repeat_interleave(math.prod(self.size))[None, :]

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, channels={self.channels}, image_size={self.image_size}, "
            f"kernel_size={self.kernel_size}, m={self.m}" + (f", stride={self.stride}" if self.stride != 1 else "")
        )
