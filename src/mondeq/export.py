r"""A trained monDEQ classifier as a fixed-depth network with a proven error bound, and its files.

:func:`unroll` turns a classifier into an :class:`UnrolledMonDEQ`: :math:`K` Peaceman-Rachford
iterations from zero, written with matrix products only (no data-dependent control flow, no
``.item()``), so that ``torch.export``, ``torch.onnx.export``, ``torch.compile`` and ``torch.func.vmap``
take it. :func:`save` writes it as an ONNX or a PT2 (``torch.export``) file that runs without mondeq,
its iterations as one loop of fixed trip count (ONNX ``Loop``); :func:`load` runs such a file again.

**The bound** (docs/math.md, "An unrolled monDEQ's error bound"). With :math:`M = I - W`
(:math:`M + M^\top \succeq 2mI`), :math:`b = Ux + b_0`, the iteration on the state :math:`u`

.. math::
    v_k = 2\operatorname{prox}_{\alpha f}(u_k) - u_k, \quad
    z_{k+1} = (I + \alpha M)^{-1}(v_k + \alpha b), \quad u_{k+1} = 2 z_{k+1} - v_k, \quad u_0 = 0

contracts by :math:`r = \|(I - \alpha M)(I + \alpha M)^{-1}\|_2 < 1` per step (the reflected prox is
nonexpansive), and :math:`\|z_{k+1} - z^\star\| \le \rho \|u_k - u^\star\|` with
:math:`\rho = \|(I + \alpha M)^{-1}\|_2`. At the fixed point :math:`u^\star = (I - \alpha M) z^\star + \alpha b`,
and :math:`\|z^\star\| \le \|b\| / m` when :math:`\sigma(0) = 0`, so after :math:`K` iterations

.. math::
    \|z_K - z^\star\| \le \rho\, r^{K-1} \left(\|I - \alpha M\|_2 / m + \alpha\right) \|Ux + b_0\|,

and the logits :math:`RPz` are within :math:`\|RP\|_2` times that (in :math:`\ell_2`, hence each logit).
The norms are computed exactly (SVDs of :math:`W` or of its per-frequency symbol) in float64 and raised
by ``FLOAT64_SLACK`` (:mod:`mondeq.robust`); the step :math:`\alpha` minimises :math:`r`. The
bound is for exact arithmetic on the model's weights: a float32 evaluation adds its rounding, not bounded
here (the export benchmark measures it against the float64 network).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import ProximalActivation
from .errors import CheckpointError, ConfigError, first_line
from .files import check_output_file, write_atomic
from .models.kinds import KINDS
from .operators.convolutional import symbol
from .operators.fully_connected import DenseOperator
from .robust.certificates import FLOAT64_SLACK, readout_norm
from .validation import POSITIVE, POSITIVE_INT

__all__ = [
    "FORMATS",
    "MAX_ITERATIONS",
    "Exported",
    "RuntimeCertificate",
    "UnrollBound",
    "UnrolledMonDEQ",
    "describe",
    "injection_bound",
    "load",
    "save",
    "unroll",
]

#: File formats of :func:`save`: ONNX (onnxruntime and other runtimes) and PT2 (``torch.export.load``).
FORMATS = ("onnx", "pt2")
#: The most iterations :func:`unroll` builds; a bound that needs more is refused.
MAX_ITERATIONS = 1000
#: Metadata key of an exported file (ONNX ``metadata_props``, PT2 extra file ``mondeq.json``).
METADATA_KEY = "mondeq"


@dataclass(frozen=True)
class UnrollBound:
    r"""The constants of the bound (module docstring): after :attr:`iterations` iterations with step :attr:`alpha`,
    :math:`\|RP(z_K - z^\star)\|_2 \le` :meth:`logit_error` of :math:`\|Ux + b_0\|_2`.

    Attributes:
        iterations: :math:`K`.
        alpha: the step size :math:`\alpha`.
        rate: :math:`r = \|(I - \alpha M)(I + \alpha M)^{-1}\|_2`.
        resolvent_norm: :math:`\rho = \|(I + \alpha M)^{-1}\|_2`.
        start: :math:`\|I - \alpha M\|_2 / m + \alpha`, so that :math:`\|u_0 - u^\star\| \le` ``start`` :math:`\|b\|`.
        readout_norm: :math:`\|RP\|_2`.
    """

    iterations: int
    alpha: float
    rate: float
    resolvent_norm: float
    start: float
    readout_norm: float

    @property
    def factor(self) -> float:
        r""":math:`\|RP\| \rho r^{K-1}` ``start``: the logit error per unit of :math:`\|Ux + b_0\|`."""
        return self.readout_norm * self.resolvent_norm * self.rate ** (self.iterations - 1) * self.start

    def logit_error(self, injection_norm: float | Tensor) -> float | Tensor:
        r"""The bound on :math:`\|\text{logits}_K - \text{logits}^\star\|_2` for an input with
        :math:`\|Ux + b_0\|_2` = ``injection_norm``."""
        return self.factor * injection_norm

    def iterations_for(self, error: float, injection_norm: float) -> int:
        """The fewest iterations whose :meth:`logit_error` at ``injection_norm`` is at most ``error``."""
        per_step = self.readout_norm * self.resolvent_norm * self.start * injection_norm
        if per_step <= error or self.rate == 0:
            return 1
        return 1 + math.ceil(math.log(error / per_step) / math.log(self.rate))


@dataclass(frozen=True)
class RuntimeCertificate:
    r"""The bound an :class:`UnrolledMonDEQ` built with ``certify=True`` computes for each input from its last
    iterate :math:`z` and reflected state :math:`v`, without a multiplication:

    .. math::
        \|\text{logits} - \text{logits}^\star\|_2 \le \|RP\|_2 \left(1 + \frac{\|W\|_2}{m}\right) \|z - \sigma(p)\|_2,
        \qquad p = Wz + b = \frac{(1 + \alpha) z - v}{\alpha}

    (the resolvent identity gives :math:`p`; :math:`\|z - z^\star\| \le \|r\| + \|Wr\|/m` for the residual
    :math:`r = z - \sigma(Wz + b)`, docs/math.md "What a certificate accounts for"). Like the a priori bound it
    holds for exact arithmetic; computed in float32 its floor is the float32 rounding of the iterate.

    Attributes:
        residual: :math:`\|RP\|_2 (1 + \|W\|_2 / m)`, from exact float64 norms raised by the float64 slack.
    """

    residual: float


# -- the operator's blocks and the contraction --------------------------------------------------
def tier_shapes(operator: nn.Module) -> list[tuple[int, ...]]:
    """The ``(c, H, W)`` of each tier of a convolutional operator's hidden state (one for a single convolution)."""
    z = operator.unflatten(torch.zeros(1, operator.features, dtype=torch.float64))
    return [tuple(t.shape[1:]) for t in (z if isinstance(z, tuple) else (z,))]


def alias_frequencies(sizes: list[tuple[int, int]]) -> list[Tensor]:
    r"""For tiers of sizes :math:`(H_i, W_i) = 2^{L-i} (h, w)`, the frequencies :math:`k = q + (h, w) p` of tier
    :math:`i` that alias to each frequency :math:`q` of the last tier, ``(Q, 4^{L-i}, 2)``: :math:`q` row-major
    over :math:`0 \le q_1 < h`, :math:`0 \le q_2 \le w/2` (the others are conjugates), :math:`p` row-major."""
    h, w = sizes[-1]
    q1, q2 = torch.meshgrid(torch.arange(h), torch.arange(w // 2 + 1), indexing="ij")
    out = []
    for height, _ in sizes:
        factor = height // h
        p1, p2 = torch.meshgrid(torch.arange(factor), torch.arange(factor), indexing="ij")
        k1 = q1.reshape(-1, 1) + h * p1.reshape(1, -1)
        k2 = q2.reshape(-1, 1) + w * p2.reshape(1, -1)
        out.append(torch.stack([k1, k2], dim=-1))
    return out


def _block_diagonal(blocks: Tensor) -> Tensor:
    """``(Q, s, a, b)`` to ``(Q, s a, s b)`` block-diagonal matrices."""
    count, slots, rows, cols = blocks.shape
    out = blocks.new_zeros(count, slots, rows, slots, cols)
    index = torch.arange(slots)
    out[:, index, :, index, :] = blocks.permute(1, 0, 2, 3)
    return out.reshape(count, slots * rows, slots * cols)


def _tiered_blocks(operator: nn.Module, weights: Any) -> Tensor:
    r""":math:`W` of a multi-tier convolution in the unitary Fourier basis of every tier: block-diagonal over the last
    tier's frequencies :math:`q` (within a tier a convolution keeps the frequency; the stride-2 convolution between
    tiers sums the four that alias), each block over the frequencies of :func:`alias_frequencies` (tiers, then
    :math:`p`, then channels). :math:`W = (1 - m) I - A^H A + S`: :math:`A` has the within-tier symbols on its
    diagonal and :math:`\tfrac12 \hat D_i(k)` from frequency :math:`k` of tier :math:`i` to :math:`k \bmod (H_{i+1},
    W_{i+1})` of tier :math:`i + 1`."""
    shapes = tier_shapes(operator)
    sizes = [shape[1:] for shape in shapes]
    frequencies = alias_frequencies(sizes)
    counts = [f.shape[1] * shape[0] for f, shape in zip(frequencies, shapes)]
    offsets = [sum(counts[:i]) for i in range(len(counts))]
    n, q = sum(counts), frequencies[0].shape[0]
    a = torch.zeros(q, n, n, dtype=torch.complex128)
    skew = torch.zeros_like(a)
    for i, (tier, size, k) in enumerate(zip(weights.tiers, sizes, frequencies)):
        span = slice(offsets[i], offsets[i] + counts[i])
        a[:, span, span] = _block_diagonal(symbol(tier.A, size)[k[..., 0], k[..., 1]])
        skew[:, span, span] = _block_diagonal(symbol(tier.S, size)[k[..., 0], k[..., 1]])
        if tier.down is None:
            continue
        down = 0.5 * symbol(tier.down, size)[k[..., 0], k[..., 1]]  # (Q, slots, c_next, c)
        c, c_next = shapes[i][0], shapes[i + 1][0]
        factor = size[0] // sizes[-1][0]
        half = factor // 2
        for slot in range(factor * factor):  # p = (p1, p2) aliases to p mod half on the next tier
            p1, p2 = divmod(slot, factor)
            rows = offsets[i + 1] + ((p1 % half) * half + p2 % half) * c_next
            cols = offsets[i] + slot * c
            a[:, rows : rows + c_next, cols : cols + c] = down[:, slot]
    eye = torch.eye(n, dtype=a.dtype)
    return (1 - operator.m) * eye - a.mH @ a + skew


def operator_blocks(operator: nn.Module) -> Tensor:
    r""":math:`W` as a batch of blocks with its singular values: ``(1, n, n)`` for a dense operator; for a
    convolution the blocks of :func:`_tiered_blocks` ``(Q, n_q, n_q)`` (a single convolution: its per-frequency
    symbol over the frequencies of the real FFT, the others being their conjugates)."""
    with torch.no_grad():
        weights = operator.weights()
        if isinstance(operator, DenseOperator):
            return weights[None]
        shapes = tier_shapes(operator)
        if any(len(shape) != 3 for shape in shapes):
            raise ConfigError(f"export supports convolutions of 2-D images, not the {type(operator).__name__}'s {shapes[0][1:]}")
        if weights.fourier is not None:
            matrices = weights.fourier.matrices
            return matrices.reshape(-1, *matrices.shape[-2:])
        return _tiered_blocks(operator, weights)


def largest_norm(matrices: Tensor) -> float:
    """The largest spectral norm of a batch of matrices, computed by SVD."""
    return float(torch.linalg.matrix_norm(matrices.reshape(-1, *matrices.shape[-2:]), ord=2).max())


def _contraction(blocks: Tensor, m: float, alpha: float) -> tuple[float, float, float, Tensor]:
    """``(rate, resolvent_norm, start, inverse)`` of :class:`UnrollBound` for step ``alpha``, each raised by
    the float64 slack, and the blocks of :math:`(I + \\alpha M)^{-1}`."""
    eye = torch.eye(blocks.shape[-1], dtype=blocks.dtype)
    operator = eye - blocks  # M = I - W
    inverse = torch.linalg.inv(eye + alpha * operator)
    reflected = eye - alpha * operator
    up = 1 + FLOAT64_SLACK
    start = (largest_norm(reflected) * up / m + alpha) * up
    return largest_norm(reflected @ inverse) * up, largest_norm(inverse) * up, start, inverse


def best_step(blocks: Tensor, m: float) -> float:
    r"""The step :math:`\alpha` that minimises the rate :math:`r` (a log-spaced grid, then golden sections)."""

    eye = torch.eye(blocks.shape[-1], dtype=blocks.dtype)
    operator = eye - blocks

    def rate(log_alpha: float) -> float:
        step = math.exp(log_alpha)
        return largest_norm((eye - step * operator) @ torch.linalg.inv(eye + step * operator))

    grid = [math.log(10) * (-3 + 6 * i / 24) for i in range(25)]
    best = min(range(len(grid)), key=lambda i: rate(grid[i]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(20):
        a, b = high - golden * (high - low), low + golden * (high - low)
        if rate(a) <= rate(b):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2)


def injection_bound(operator: nn.Module, low: Tensor, high: Tensor) -> float:
    r"""An upper bound of :math:`\|Ux + b_0\|_2` over the box ``low <= x <= high`` (one input each, ``(1, ...)``),
    row by row: :math:`|(Ux + b_0)_i| \le |(Uc + b_0)_i| + (|U| h)_i` with centre :math:`c`, half-width :math:`h`."""
    magnitude = operator.U.weight.detach().abs()
    with torch.no_grad():
        centre, half = (low + high) / 2, (high - low) / 2
        if isinstance(operator, DenseOperator):
            spread = F.linear(half.flatten(1), magnitude)
        else:
            spread = _circular_conv(half, magnitude, None, operator.stride).flatten(1)
        total = (operator.inject(centre).abs() + spread).norm()
    return float(total) * (1 + FLOAT64_SLACK)


# -- the exported network's parts ------------------------------------------------------------------
def _circular_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """2-D convolution with circular padding written as slices (every exporter takes them)."""
    pad = weight.shape[-1] // 2
    if pad:
        x = torch.cat([x[..., -pad:], x, x[..., :pad]], dim=-1)
        x = torch.cat([x[..., -pad:, :], x, x[..., :pad, :]], dim=-2)
    return F.conv2d(x, weight, bias, stride=stride)


class _DenseInjection(nn.Module):
    """:math:`Ux + b_0` of a dense operator on flattened inputs."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias)


class _ConvInjection(nn.Module):
    """:math:`Ux + b_0` of a convolutional operator: a strided circular convolution into the first tier, flattened,
    and zeros for the other tiers (``rest`` entries)."""

    def __init__(self, weight: Tensor, bias: Tensor, stride: int, rest: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.rest = stride, rest

    def forward(self, x: Tensor) -> Tensor:
        first = _circular_conv(x, self.weight, self.bias, self.stride).flatten(1)
        return F.pad(first, (0, self.rest)) if self.rest else first


class _DenseResolvent(nn.Module):
    r""":math:`y \mapsto (I + \alpha M)^{-1} y` for rows ``y`` ``(N, n)``: one product with the stored inverse."""

    def __init__(self, inverse: Tensor) -> None:
        super().__init__()
        self.register_buffer("inverse_t", inverse.T.contiguous())

    def forward(self, y: Tensor) -> Tensor:
        return y @ self.inverse_t


class _RealDFT(nn.Module):
    r"""The unitary 2-D DFT of real ``(N, c, H, W)`` images onto the :math:`Q = W/2 + 1` columns of the real FFT, as
    products with cosine and sine matrices (along the width, then the height), and its inverse (the conjugate half of
    the spectrum weighted in: :math:`a_q = 2` but for the constant and Nyquist columns). Real arithmetic only."""

    def __init__(self, height: int, width: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.height, self.width, self.q = height, width, width // 2 + 1
        scale = 1 / math.sqrt(height * width)
        w, q, h = (torch.arange(n, dtype=torch.float64) for n in (width, self.q, height))
        across = 2 * math.pi * torch.outer(w, q) / width  # (W, Q)
        down = 2 * math.pi * torch.outer(h, h) / height  # (H, H), symmetric
        weight = torch.full((self.q,), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if width % 2 == 0:
            weight[-1] = 1.0
        self.register_buffer("to_rows", (torch.cat([across.cos(), -across.sin()], dim=1) * scale).to(dtype))
        self.register_buffer("columns", torch.cat([down.cos(), down.sin()], dim=0).to(dtype))
        self.register_buffer(
            "from_rows", (torch.cat([(weight * across.cos()).T, -(weight * across.sin()).T], dim=0) * scale).to(dtype)
        )

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """The real and imaginary parts of the spectrum, each ``(N, c, H, Q)``."""
        h, q = self.height, self.q
        rows = self.columns @ (image @ self.to_rows)  # (N, c, 2H, 2Q): [cos; sin] x [Re | Im] of the width DFT
        cos_part, sin_part = rows[:, :, :h], rows[:, :, h:]
        return cos_part[..., :q] + sin_part[..., q:], cos_part[..., q:] - sin_part[..., :q]

    def inverse(self, real: Tensor, imag: Tensor) -> Tensor:
        """The real image ``(N, c, H, W)`` of a spectrum of a real image given on the columns of the real FFT."""
        h, q = self.height, self.q
        rows = self.columns @ torch.cat([real, imag], dim=-1)
        cos_part, sin_part = rows[:, :, :h], rows[:, :, h:]
        back = torch.cat([cos_part[..., :q] - sin_part[..., q:], cos_part[..., q:] + sin_part[..., :q]], dim=-1)
        return back @ self.from_rows


def _spectrum_index(height: int, width: int, k: Tensor) -> tuple[Tensor, Tensor]:
    """Where frequencies ``k`` ``(..., 2)`` of a real ``height x width`` image lie in its real-FFT spectrum
    (flattened ``H x Q``), and the sign of their imaginary part (-1: the conjugate of the frequency stored)."""
    q = width // 2 + 1
    stored = k[..., 1] < q
    rows = torch.where(stored, k[..., 0], (-k[..., 0]) % height)
    cols = torch.where(stored, k[..., 1], (-k[..., 1]) % width)
    return rows * q + cols, torch.where(stored, 1.0, -1.0).to(torch.float64)


class _FourierResolvent(nn.Module):
    r""":math:`(I + \alpha M)^{-1}` of a (multi-tier) circular convolution on flat hidden states ``(N, n)``, in real
    arithmetic: each tier's real DFT (:class:`_RealDFT`), its frequencies gathered into the vectors of the last
    tier's frequencies :math:`q` (:func:`alias_frequencies`; those outside the real FFT's columns as conjugates), one
    real matrix :math:`\begin{pmatrix} \Re R_q & -\Im R_q \\ \Im R_q & \Re R_q \end{pmatrix}` per :math:`q`, and
    back. No complex numbers: ONNX runtimes and ``torch.export`` take it as is."""

    def __init__(self, inverse: Tensor, shapes: list[tuple[int, ...]], dtype: torch.dtype) -> None:
        super().__init__()
        sizes = [shape[1:] for shape in shapes]
        self.shapes = shapes
        self.transforms = nn.ModuleList([_RealDFT(*size, dtype) for size in sizes])
        real, imag = inverse.real, inverse.imag
        blocks = torch.cat([torch.cat([real, -imag], dim=-1), torch.cat([imag, real], dim=-1)], dim=-2)
        self.register_buffer("blocks", blocks.to(dtype))
        self.n = inverse.shape[-1]
        h, w = sizes[-1]
        #: Entries of each tier in a block: its aliasing frequencies times its channels.
        self.counts = [(height // h) ** 2 * shape[0] for (height, _), shape in zip(sizes, shapes)]
        for i, ((height, width), k) in enumerate(zip(sizes, alias_frequencies(sizes))):
            gather, sign = _spectrum_index(height, width, k)
            self.register_buffer(f"gather{i}", gather.flatten())
            self.register_buffer(f"gather_sign{i}", sign[..., None, None].to(dtype))  # (Q, slots, 1, 1)
            # each stored frequency of the tier from the block of its q, or its conjugate's
            rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width // 2 + 1), indexing="ij")
            conjugate = cols % w > w // 2
            rows = torch.where(conjugate, (-rows) % height, rows)
            cols = torch.where(conjugate, (-cols) % width, cols)
            factor = height // h
            block = (rows % h) * (w // 2 + 1) + cols % w
            slot = (rows // h) * factor + cols // w
            self.register_buffer(f"scatter{i}", (block * factor**2 + slot).flatten())
            self.register_buffer(f"scatter_sign{i}", torch.where(conjugate, -1.0, 1.0).flatten()[:, None, None].to(dtype))

    def forward(self, y: Tensor) -> Tensor:
        sections = [math.prod(shape) for shape in self.shapes]
        real_parts, imag_parts = [], []
        for i, (tier, shape, transform) in enumerate(zip(y.split(sections, dim=1), self.shapes, self.transforms)):
            gather, sign = getattr(self, f"gather{i}"), getattr(self, f"gather_sign{i}")
            real, imag = (
                spectrum.flatten(2)[..., gather].unflatten(2, sign.shape[:2]).permute(2, 3, 1, 0)  # (Q, slots, c, N)
                for spectrum in transform(tier.reshape(-1, *shape))
            )
            real_parts.append(real.flatten(1, 2))
            imag_parts.append((imag * sign).flatten(1, 2))
        mapped = self.blocks @ torch.cat(real_parts + imag_parts, dim=1)  # (Q, 2n, N)
        out, offset = [], 0
        for i, ((c, height, _), transform) in enumerate(zip(self.shapes, self.transforms)):
            count = self.counts[i]
            scatter, sign = getattr(self, f"scatter{i}"), getattr(self, f"scatter_sign{i}")
            real, imag = (
                mapped[:, start : start + count].reshape(-1, c, mapped.shape[-1])[scatter]  # (H Q_i, c, N)
                for start in (offset, self.n + offset)
            )
            real, imag = (part.permute(2, 1, 0).unflatten(2, (height, transform.q)) for part in (real, imag * sign))
            out.append(transform.inverse(real, imag).flatten(1))
            offset += count
        return torch.cat(out, dim=1)


class _Prox(nn.Module):
    r""":math:`\operatorname{prox}_{\alpha f}` of the activation, in closed form."""

    def __init__(self, activation: ProximalActivation, alpha: float) -> None:
        super().__init__()
        self.activation = activation
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        return self.activation.prox(x, self.alpha)


class _Readout(nn.Module):
    """The classifier's pooling of the flat hidden state (its kind's own, :data:`~mondeq.models.KINDS`) and its
    linear readout; ``shapes`` are the tiers' to unflatten a convolution's state into (``None``: dense)."""

    def __init__(self, weight: Tensor, bias: Tensor, shapes: list[tuple[int, ...]] | None, pool: Callable[[Any], Tensor]) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.shapes, self.pool = shapes, pool

    def forward(self, z: Tensor) -> Tensor:
        if self.shapes is not None:
            tiers = [t.reshape(-1, *shape) for t, shape in zip(z.split([math.prod(s) for s in self.shapes], 1), self.shapes)]
            z = tiers[0] if len(tiers) == 1 else tuple(tiers)
        return F.linear(self.pool(z).flatten(1), self.weight, self.bias)


class UnrolledMonDEQ(nn.Module):
    r"""A monDEQ classifier as :math:`K` Peaceman-Rachford iterations from zero (module docstring).

    Built by :func:`unroll`; holds buffers only. Its logits are within :meth:`error` (:math:`\ell_2`) of the
    equilibrium model's for every input, and within :attr:`error_bound` for every input of the box it was
    built for; a prediction whose top-two margin exceeds :math:`\sqrt2` times that is the equilibrium model's.

    Shape:
        - Input: the classifier's, e.g. :math:`(N, C, H, W)` normalised images.
        - Output: :math:`(N, \text{classes})` logits.

    Attributes:
        bound: the :class:`UnrollBound` it carries.
        error_bound: the logit error over the input box given to :func:`unroll` (``None`` without one).
        looped: run the iterations as one ``torch.while_loop`` (how :func:`save` exports them) rather than
            unrolled in Python (the default: ``torch.func.vmap`` needs it).
    """

    def __init__(
        self,
        injection: nn.Module,
        resolvent: nn.Module,
        prox: nn.Module,
        readout: nn.Module,
        bound: UnrollBound,
        certificate: RuntimeCertificate | None = None,
    ) -> None:
        super().__init__()
        self.injection, self.resolvent, self.prox, self.readout = injection, resolvent, prox, readout
        self.bound = bound
        self.certificate = certificate
        self.error_bound: float | None = None
        self.looped = False

    @property
    def iterations(self) -> int:
        return self.bound.iterations

    def step(self, state: Tensor, scaled: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""One iteration from the state :math:`u_k` and :math:`\alpha b`: :math:`(u_{k+1}, z_{k+1}, v_k)`."""
        reflected = 2 * self.prox(state) - state
        z = self.resolvent(reflected + scaled)
        return 2 * z - reflected, z, reflected

    def iterate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The hidden state after :attr:`iterations` iterations, flat ``(N, n)`` (the operator's ``flatten``
        order), and the reflected state :math:`v` of the last one (module docstring). With :attr:`looped`, the iterations are one
        ``torch.while_loop`` (an ONNX ``Loop``: a file the size of one iteration, exported in seconds) instead of
        :math:`K` copies; ``torch.func.vmap`` needs the copies."""
        scaled = self.bound.alpha * self.injection(x)
        state = torch.zeros_like(scaled)
        if self.looped:
            count = torch.zeros((), dtype=torch.int64, device=x.device)
            _, _, z, reflected = torch.while_loop(
                lambda i, *_: i < self.bound.iterations,
                lambda i, state, z, reflected: (i + 1, *self.step(state, scaled)),
                (count, state, state.clone(), state.clone()),
            )
            return z, reflected
        z = reflected = state
        for _ in range(self.bound.iterations):
            state, z, reflected = self.step(state, scaled)
        return z, reflected

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        z, reflected = self.iterate(x)
        logits = self.readout(z)
        if self.certificate is None:
            return logits
        return logits, self.certified_error(z, reflected)

    def certified_error(self, z: Tensor, reflected: Tensor) -> Tensor:
        """Per input, the bound of :class:`RuntimeCertificate` from the last iterate ``z`` and the reflected state, ``(N,)``."""
        alpha = self.bound.alpha
        pre = ((1 + alpha) * z - reflected) / alpha  # W z + b (the resolvent identity)
        return self.certificate.residual * (z - self.prox.activation(pre)).flatten(1).norm(dim=1)

    @torch.no_grad()
    def error(self, x: Tensor) -> Tensor:
        """Per input, the a priori bound on the logits' l2 distance from the equilibrium model's (:class:`UnrollBound`),
        ``(N,)`` float64."""
        injection = copy.deepcopy(self.injection).double()(x.double())  # float64: no float32 rounding in the bound
        return self.bound.logit_error(injection.flatten(1).norm(dim=1)) * (1 + FLOAT64_SLACK)


def _check_request(model: nn.Module, iterations: int | None, error: float | None, input_range: Any, max_iterations: int) -> None:
    """:class:`~mondeq.errors.ConfigError` naming what :func:`unroll` cannot do as asked."""
    if (iterations is None) == (error is None):
        raise ConfigError("give the number of iterations or the logit error to reach, one of them")
    if iterations is not None:
        POSITIVE_INT.check("iterations", iterations)
        if iterations > max_iterations:
            raise ConfigError(f"iterations must be at most {max_iterations}, got {iterations}")
    if error is not None:
        POSITIVE.check("error", error)
        if input_range is None:
            raise ConfigError("a logit error needs the input range it holds over (input_range=(low, high))")
    config = getattr(model, "config", None)
    if getattr(model, "layer", None) is None or getattr(config, "kind", None) is None:
        raise ConfigError(f"export takes a preset monDEQ classifier (fc, single-conv, multi-conv), got {type(model).__name__}")


def _parts(model: nn.Module, operator: nn.Module, inverse: Tensor) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The injection, resolvent and readout modules of ``model`` in its dtype, from the float64 ``operator`` and
    resolvent blocks ``inverse``."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        weight, bias = (t.detach().to(dtype).clone() for t in (operator.U.weight, operator.U.bias))
        readout = (model.readout.weight.detach().clone(), model.readout.bias.detach().clone())
        pool = functools.partial(KINDS[model.config.kind].pool, model.config)
        if isinstance(operator, DenseOperator):
            return _DenseInjection(weight, bias), _DenseResolvent(inverse[0].to(dtype)), _Readout(*readout, None, pool)
        shapes = tier_shapes(operator)
        injection = _ConvInjection(weight, bias, operator.stride, operator.features - math.prod(shapes[0]))
        resolvent = _FourierResolvent(inverse, shapes, dtype)
        return injection, resolvent, _Readout(*readout, shapes, pool)


def unroll(
    model: nn.Module,
    *,
    iterations: int | None = None,
    error: float | None = None,
    input_range: tuple[Tensor, Tensor] | None = None,
    max_iterations: int = MAX_ITERATIONS,
    certify: bool = False,
) -> UnrolledMonDEQ:
    r"""``model`` (a preset fc, single-conv or multi-conv :class:`~mondeq.models.MonDEQClassifier`) as an :class:`UnrolledMonDEQ`.

    Args:
        iterations: :math:`K`, given.
        error: or the logit error (:math:`\ell_2`, hence every logit) to prove over ``input_range``: :math:`K` is
            the fewest iterations that reach it (at most ``max_iterations``, else :class:`~mondeq.errors.ConfigError`).
        input_range: ``(low, high)`` bounds of the model's inputs, broadcastable to one input (for images
            normalised per channel: ``(1, C, 1, 1)``); with it the bound over that box is :attr:`~UnrolledMonDEQ.error_bound`.
        certify: the network also returns, per input, the bound of :class:`RuntimeCertificate` computed from its
            last iterate (far tighter than the a priori one): ``(logits, bound)``.

    The step :math:`\alpha` minimises the contraction rate for activations whose prox has a closed form
    (ReLU, leaky ReLU, hard tanh); for others (tanh) it is 1, where the prox is :math:`\sigma` itself.
    Activations with :math:`\sigma(0) \ne 0` (sigmoid, softplus) are refused: the start bound needs it.
    """
    _check_request(model, iterations, error, input_range, max_iterations)
    config = model.config
    exact = copy.deepcopy(model).cpu().double().eval()  # the proof in float64, on the CPU
    operator, activation = exact.layer.linear, exact.layer.activation
    blocks = operator_blocks(operator)
    if float(activation(torch.zeros(1, dtype=torch.float64))) != 0.0:
        raise ConfigError(
            f"export needs an activation with sigma(0) = 0 (relu, leaky_relu, hardtanh, tanh), not {config.activation}"
        )
    closed_form = type(activation).prox is not ProximalActivation.prox
    alpha = best_step(blocks, operator.m) if closed_form else 1.0
    rate, resolvent_norm, start, inverse = _contraction(blocks, operator.m, alpha)
    if not rate < 1:
        raise ConfigError(f"the unrolled iteration does not contract (rate {rate:.12g}): m = {operator.m:g} is too small")
    norm = readout_norm(exact)
    shape = (1, config.in_channels, config.image_size, config.image_size)
    worst = None
    if input_range is not None:
        worst = injection_bound(operator, *(torch.as_tensor(t, dtype=torch.float64).expand(shape) for t in input_range))
    if error is not None:
        probe = UnrollBound(1, alpha, rate, resolvent_norm, start, norm)
        iterations = probe.iterations_for(error, worst)
        if iterations > max_iterations:
            raise ConfigError(
                f"a logit error of {error:g} needs {iterations} iterations, more than {max_iterations} "
                f"(contraction rate {rate:.4f} per iteration): ask for a larger error"
            )
    bound = UnrollBound(iterations, alpha, rate, resolvent_norm, start, norm)
    injection, resolvent, readout = _parts(model, operator, inverse)
    up = 1 + FLOAT64_SLACK
    certificate = RuntimeCertificate(norm * (1 + largest_norm(blocks) * up / operator.m) * up) if certify else None
    prox = _Prox(copy.deepcopy(model.layer.activation), alpha)
    unrolled = UnrolledMonDEQ(injection, resolvent, prox, readout, bound, certificate)
    if worst is not None:
        unrolled.error_bound = float(bound.logit_error(worst))
    return unrolled.to(next(model.parameters()).device).eval()


# -- files ---------------------------------------------------------------------------------------
def _needs(module: str, purpose: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{purpose} needs the {module} package: pip install 'mondeq[export]'") from None


def save(unrolled: UnrolledMonDEQ, path: str | Path, file_format: str, input_shape: tuple[int, ...], metadata: dict) -> Path:
    """Write ``unrolled`` to ``path`` as ``file_format`` (:data:`FORMATS`) for inputs ``(batch, *input_shape)`` with any
    batch size, ``metadata`` (JSON) inside the file; written atomically."""
    if file_format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {file_format!r}")
    path = check_output_file(path)
    unrolled = unrolled.eval()
    example = torch.zeros(2, *input_shape, dtype=next(iter(unrolled.buffers())).dtype)
    batch = torch.export.Dim("batch")
    text = json.dumps(metadata)
    with _looped(unrolled):
        if file_format == "pt2":
            program = torch.export.export(unrolled, (example,), dynamic_shapes=({0: batch},))
            buffer = io.BytesIO()
            torch.export.save(program, buffer, extra_files={f"{METADATA_KEY}.json": text})
            return write_atomic(path, buffer.getvalue())
        onnx = _needs("onnx", "ONNX export")
        _needs("onnxscript", "ONNX export")
        outputs = ["logits"] if unrolled.certificate is None else ["logits", "bound"]
        with _quiet():
            program = torch.onnx.export(
                unrolled, (example,), dynamo=True, input_names=["images"], output_names=outputs,
                dynamic_shapes=({0: batch},), verbose=False,
            )  # fmt: skip
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: text})
    return write_atomic(path, proto.SerializeToString())


@contextlib.contextmanager
def _looped(unrolled: UnrolledMonDEQ) -> Iterator[None]:
    """``unrolled`` with its iterations as one loop while it is exported (a file of one iteration, not K)."""
    unrolled.looped = True
    try:
        yield
    finally:
        unrolled.looped = False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The ONNX exporter's notes (optional packages it skips, deprecations) kept off the user's terminal."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


class Exported:
    """An exported file, run: ``exported(x)`` gives the logits of a float32 ``(N, ...)`` tensor (and each input's
    bound, ``(logits, bound)``, from a network built with ``certify=True``); :attr:`metadata` is what :func:`save`
    stored."""

    def __init__(self, run: Any, metadata: dict) -> None:
        self._run = run
        self.metadata = metadata

    def __call__(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        return self._run(x)


def load(path: str | Path) -> Exported:
    """Run an ONNX (onnxruntime) or PT2 (``torch.export.load``) file written by :func:`save`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such exported file")
    try:
        if path.suffix == ".pt2":
            extra = {f"{METADATA_KEY}.json": ""}
            program = torch.export.load(str(path), extra_files=extra)
            module = program.module()
            return Exported(lambda x: module(x), json.loads(extra[f"{METADATA_KEY}.json"] or "{}"))
        runtime = _needs("onnxruntime", "running an ONNX file")
        session = runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        props = session.get_modelmeta().custom_metadata_map
        name = session.get_inputs()[0].name

        def run(x: Tensor) -> Tensor | tuple[Tensor, ...]:
            outputs = [torch.from_numpy(out) for out in session.run(None, {name: x.detach().cpu().numpy()})]
            return outputs[0] if len(outputs) == 1 else tuple(outputs)

        return Exported(run, json.loads(props.get(METADATA_KEY, "{}")))
    except ConfigError:
        raise
    except Exception as error:  # a damaged or foreign file: one line naming it
        raise CheckpointError(f"{path} is not a readable exported model: {first_line(error)}") from error


def describe(bound: UnrollBound) -> dict:
    """The bound's constants as plain numbers (the metadata an exported file carries)."""
    return asdict(bound)
