r"""Convolutional monotone operators: single convolution and multi-tier (multi-scale).

The hidden state has one tier per resolution, tier :math:`i` of shape
:math:`(c_i, h_i, w_i)` with :math:`(h_{i+1}, w_{i+1}) = (h_i, w_i) / 2`. :math:`A` is block lower-bidiagonal:
:math:`A_{ii}` a circular convolution within tier :math:`i`, :math:`A_{i+1,i}` a stride-2
circular convolution from tier :math:`i` to :math:`i+1`. :math:`B` is block diagonal, and

.. math::
    W = (1 - m) I - A^\top A + B - B^\top ,

monotone for every parameter value. Each convolution kernel :math:`K` enters as
:math:`g \, K / \|K\|_F` with a learned scalar :math:`g` (the paper's normalisation). Unlike
the paper-era code, :math:`A^\top A`'s weight is :math:`g^2`, which cannot turn negative.

**Resolvent.** With the unitary 2-D DFT per tier, circular convolutions become per-frequency
:math:`c \times c` matrices (their symbols :math:`\hat K(f)`) and a stride-2 convolution maps the
four fine frequencies that alias to coarse frequency :math:`g` onto :math:`g`:
:math:`\widehat{A_{i+1,i} z}(g) = \tfrac12 \sum_{f \to g} \hat K(f) \hat z(f)`. Hence
:math:`M = I + \alpha(I - W)` is block tridiagonal across tiers with blocks that are block
diagonal over alias groups, and block (Schur-complement) elimination

.. math::
    S_0 = M_{00}, \qquad S_{i+1} = M_{i+1,i+1} - M_{i+1,i} S_i^{-1} M_{i,i+1}

needs only inverses of :math:`4c_i \times 4c_i` matrices per alias group (:math:`c \times c`
per frequency on the coarsest tier). A single tier uses the real FFT (half spectrum).

**Dimensions.** A single tier works on signals of any of 1, 2 or 3 spatial dimensions
(``(N, C, L)``, ``(N, C, H, W)``, ``(N, C, D, H, W)``) with the same n-dimensional code: the
convolutions, symbols and FFTs below take the dimension from their arguments. Several tiers
need 2-D images (the alias groups of a stride-2 convolution are written for two dimensions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..validation import POSITIVE_INT
from .base import MonotoneOperator, Resolvent
from .fourier import SpectralMap, from_fourier, spectral_resolvent, to_fourier

__all__ = ["MultiConv", "SingleConv"]


_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_MODULES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def circular_conv(x: Tensor, kernel: Tensor, stride: int = 1) -> Tensor:
    """1-, 2- or 3-D convolution (cross-correlation) with circular padding that keeps the size / stride."""
    n, pad = kernel.dim() - 2, kernel.shape[-1] // 2
    return _CONVOLUTIONS[n](F.pad(x, (pad,) * (2 * n), mode="circular"), kernel, stride=stride)


def transpose_kernel(kernel: Tensor) -> Tensor:
    """The kernel of the adjoint circular convolution (odd kernel sizes)."""
    return kernel.transpose(0, 1).flip(tuple(range(2, kernel.dim())))


def symbol(kernel: Tensor, size: tuple[int, ...], onesided: bool = False) -> Tensor:
    r"""Per-frequency matrices :math:`\hat K(f)` of a circular convolution on signals of ``size``
    (e.g. ``(H, W)``): ``(*size, out, in)``.

    With ``onesided`` only the frequencies of the real FFT: the last size becomes ``size[-1] // 2 + 1``.
    """
    n, k = len(size), kernel.shape[-1]
    dims = tuple(range(2, 2 + n))
    placed = kernel.new_zeros(*kernel.shape[:2], *size)
    placed[(..., *[slice(0, k)] * n)] = kernel
    placed = torch.roll(placed, shifts=(-(k // 2),) * n, dims=dims)
    fft = torch.fft.rfftn if onesided else torch.fft.fftn
    return fft(placed, dim=dims).conj().permute(*dims, 0, 1).resolve_conj().contiguous()


def group(x: Tensor) -> Tensor:
    """``(H, W, c, r)`` per-frequency layout to ``(H/2, W/2, 4c, r)`` alias groups."""
    rows, cols, c, r = x.shape
    h, w = rows // 2, cols // 2
    return x.reshape(2, h, 2, w, c, r).permute(1, 3, 0, 2, 4, 5).reshape(h, w, 4 * c, r)


def ungroup(x: Tensor) -> Tensor:
    """Inverse of :func:`group`."""
    h, w, c4, r = x.shape
    c = c4 // 4
    return x.reshape(h, w, 2, 2, c, r).permute(2, 0, 3, 1, 4, 5).reshape(2 * h, 2 * w, c, r)


def _conjugate_rows(x: Tensor) -> Tensor:
    """``x[(-k) mod s]`` along the first (frequency) dim: the rows of the conjugate frequencies."""
    s = x.shape[0]
    return x[(-torch.arange(s, device=x.device)) % s]


def half_group(x: Tensor, width: int) -> Tensor:
    r"""One-sided ``(H, W/2+1, c, r)`` spectrum of real ``H x W`` images (``W = width``) to the alias
    groups ``(H/2, W/4+1, 4c, r)`` (``W/4`` rounded down).

    The groups of :func:`group` with column :math:`b \le w/2`, :math:`w = W/2`: the others are
    the complex conjugates of these (group :math:`(a, b)` pairs with :math:`(-a, -b)`), so a real
    linear map needs only them. Their frequencies in columns :math:`w + b` lie outside the
    one-sided spectrum and come from :math:`X(k, w + b) = \overline{X(-k, w - b)}`.
    """
    rows, _, c, r = x.shape
    h, w = rows // 2, width // 2
    kept = w // 2 + 1
    columns = w - torch.arange(kept, device=x.device)
    both = torch.stack([x[:, :kept], _conjugate_rows(x[:, columns]).conj()])  # (q, p h + a, b, c, r)
    return both.reshape(2, 2, h, kept, c, r).permute(2, 3, 1, 0, 4, 5).reshape(h, kept, 4 * c, r)


def half_ungroup(x: Tensor, width: int) -> Tensor:
    """Inverse of :func:`half_group`: the one-sided ``(H, W/2+1, c, r)`` spectrum from the half of the groups."""
    h, kept, c4, r = x.shape
    c, w = c4 // 4, width // 2
    parts = x.reshape(h, kept, 2, 2, c, r).permute(3, 2, 0, 1, 4, 5).reshape(2, 2 * h, kept, c, r)
    columns = w - torch.arange(kept, w + 1, device=x.device)  # X(k, j) = conj X(-k, 2w - j), column w + (w - j)
    return torch.cat([parts[0], _conjugate_rows(parts[1][:, columns]).conj()], dim=1)


def group_block_diagonal(p: Tensor) -> Tensor:
    """Per-frequency ``(H, W, c, c)`` matrices as block-diagonal ``(H/2, W/2, 4c, 4c)`` group matrices."""
    rows, cols, c, _ = p.shape
    h, w = rows // 2, cols // 2
    blocks = p.reshape(2, h, 2, w, c, c).permute(1, 3, 0, 2, 4, 5).reshape(h, w, 4, c, c)
    out = p.new_zeros(h, w, 4, c, 4, c)
    idx = torch.arange(4, device=p.device)
    out[:, :, idx, :, idx, :] = blocks.permute(2, 0, 1, 3, 4)
    return out.reshape(h, w, 4 * c, 4 * c)


@dataclass
class _TierWeights:
    A: Tensor  # (c, c, k, ..., k), one k per spatial dim: within-tier
    S: Tensor  # (c, c, k, ..., k) skew part B - B^T as one kernel
    down: Tensor | None  # (c_next, c, k, k) stride-2 to the next tier (2-D only)


@dataclass
class _ConvWeights:
    tiers: list[_TierWeights]
    #: For a single tier, W as a product per frequency of the real n-D FFT (its matrices
    #: ``(*size[:-1], size[-1]//2+1, c, c)``): several times cheaper than the three convolutions.
    fourier: SpectralMap | None

    @property
    def T(self) -> _ConvWeights:
        r"""The weights of :math:`W^\top = (1 - m) I - A^\top A - (B - B^\top)`: the skew kernels
        negated, the Fourier symbol conjugate-transposed."""
        tiers = [_TierWeights(w.A, -w.S, w.down) for w in self.tiers]
        return _ConvWeights(tiers, None if self.fourier is None else self.fourier.T)


class MultiConv(MonotoneOperator):
    r"""Multi-tier convolutional monotone operator.

    Args:
        in_channels: channels of the input image.
        channels: channels per tier, e.g. ``(16, 32, 32)``.
        image_size: side of a square input, or its ``(height, width)``; tier :math:`i` has
            ``image_size / stride / 2**i`` (each side). With one tier also ``(length,)`` or
            ``(depth, height, width)`` (see :class:`SingleConv`).
        kernel_size: odd kernel size of every convolution.
        m: monotonicity margin, :math:`m > 0`.
        stride: stride of the input injection ``U`` (1: the first tier has the image's size;
            2: half of it, a quarter of the cost per iteration).

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`.
        - Hidden state: flat :math:`(N, \sum_i c_i H_i W_i)`; :meth:`unflatten` gives the tuple
          of tiers :math:`(N, c_i, H_i, W_i)`.

    The input is injected into the first tier by a circular convolution ``U`` with bias and
    stride ``stride``; :math:`W` and its monotonicity do not depend on ``U``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...] | list[int],
        image_size: int | tuple[int, ...],
        kernel_size: int = 3,
        m: float = 0.1,
        stride: int = 1,
    ) -> None:
        super().__init__(m)
        in_channels = POSITIVE_INT.check("in_channels", in_channels)
        if not isinstance(channels, (tuple, list)):
            raise TypeError(f"channels must be a tuple or list of channels per tier, got {channels!r}")
        if not channels:
            raise ValueError("channels must name at least one tier, got an empty sequence")
        channels = tuple(POSITIVE_INT.check(f"channels[{i}]", c) for i, c in enumerate(channels))
        shape = image_size if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        if not 1 <= len(shape) <= 3:
            raise ValueError(
                "image_size must be a side (square image), (length,), (height, width) or (depth, height, width), "
                f"got {image_size!r}"
            )
        shape = tuple(POSITIVE_INT.check("image_size", side) for side in shape)
        if len(shape) != 2 and len(channels) > 1:
            raise ValueError(
                f"{len(channels)} tiers need 2-D images, but image_size {image_size!r} has {len(shape)} dimension(s): "
                "use one tier (SingleConv) for 1-D and 3-D signals"
            )
        if POSITIVE_INT.check("kernel_size", kernel_size) % 2 != 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        stride = POSITIVE_INT.check("stride", stride)

        def named(size: tuple[int, ...]) -> str:
            return str(size[0]) if len(set(size)) == 1 else "x".join(map(str, size))

        if any(side % stride for side in shape):
            raise ValueError(f"image_size {named(shape)} is not a multiple of the injection stride {stride}")
        sizes = [tuple(side // stride // 2**i for side in shape) for i in range(len(channels))]
        for i, size in enumerate(sizes):
            if min(size) < kernel_size or (i + 1 < len(sizes) and any(side % 2 for side in size)):
                raise ValueError(
                    f"image_size {named(shape)} (stride {stride}) does not support {len(channels)} tiers: tier {i} "
                    f"has side {named(size)}, which must be >= kernel_size {kernel_size} and even for every tier "
                    "but the last"
                )
        self.in_channels = in_channels
        self.channels = channels
        self.image_size = image_size if isinstance(image_size, int) else shape
        self.image_shape = shape
        self.stride = stride
        #: Spatial size of each tier ((height, width) for images).
        self.sizes: tuple[tuple[int, ...], ...] = tuple(sizes)
        self.kernel_size = kernel_size
        self.features = sum(c * math.prod(size) for c, size in zip(channels, sizes))
        kernel = (kernel_size,) * len(shape)
        self.U = _CONV_MODULES[len(shape)](in_channels, channels[0], kernel_size, bias=True)
        self.A = nn.ParameterList([nn.Parameter(torch.empty(c, c, *kernel)) for c in channels])
        self.B = nn.ParameterList([nn.Parameter(torch.empty(c, c, *kernel)) for c in channels])
        self.down = nn.ParameterList([nn.Parameter(torch.empty(c1, c0, *kernel)) for c0, c1 in zip(channels[:-1], channels[1:])])
        self.A_scale = nn.Parameter(torch.ones(len(channels)))
        self.B_scale = nn.Parameter(torch.ones(len(channels)))
        self.down_scale = nn.Parameter(torch.ones(len(channels) - 1)) if len(channels) > 1 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in [*self.A, *self.B, *self.down]:
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        for p in (self.A_scale, self.B_scale, self.down_scale):
            if p is not None:
                nn.init.ones_(p)
        self.U.reset_parameters()

    @property
    def num_tiers(self) -> int:
        return len(self.channels)

    # -- structure ------------------------------------------------------------------------
    def unflatten(self, z: Tensor) -> tuple[Tensor, ...]:
        return self.tiers(z)

    def tiers(self, z: Tensor) -> tuple[Tensor, ...]:
        """Views of the tiers ``(N, c_i, *sizes[i])`` of a flat hidden state."""
        sections = [c * math.prod(size) for c, size in zip(self.channels, self.sizes)]
        parts = torch.split(z, sections, dim=1)
        return tuple(p.reshape(z.shape[0], c, *size) for p, c, size in zip(parts, self.channels, self.sizes))

    def flatten(self, z: Tensor | tuple[Tensor, ...]) -> Tensor:
        tiers = (z,) if isinstance(z, Tensor) else z
        if len(tiers) == 1:
            return tiers[0].flatten(1)
        return torch.cat([t.flatten(1) for t in tiers], dim=1)

    def check_input(self, x: Tensor) -> None:
        expected = (self.in_channels, *self.image_shape)
        if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (batch, {', '.join(map(str, expected))}) "
                f"(in_channels={self.in_channels}, image_size={self.image_size}), got {tuple(x.shape)}"
            )

    def inject(self, x: Tensor) -> Tensor:
        first = circular_conv(x, self.U.weight, stride=self.stride) + self.U.bias.view(-1, *[1] * len(self.image_shape))
        flat = first.flatten(1)
        if self.num_tiers == 1:
            return flat
        rest = flat.new_zeros(x.shape[0], self.features - flat.shape[1])
        return torch.cat([flat, rest], dim=1)

    # -- W --------------------------------------------------------------------------------
    def weights(self) -> _ConvWeights:
        def normalized(kernel: Tensor, scale: Tensor) -> Tensor:
            return scale * kernel / kernel.norm()

        tiers = []
        for i in range(self.num_tiers):
            b = normalized(self.B[i], self.B_scale[i])
            tiers.append(
                _TierWeights(
                    A=normalized(self.A[i], self.A_scale[i]),
                    S=b - transpose_kernel(b),
                    down=normalized(self.down[i], self.down_scale[i]) if i + 1 < self.num_tiers else None,
                )
            )
        fourier = None
        if self.num_tiers == 1:
            size, w = self.sizes[0], tiers[0]
            a_hat = symbol(w.A, size, onesided=True)
            eye = torch.eye(self.channels[0], dtype=a_hat.dtype, device=a_hat.device)
            fourier = SpectralMap((1 - self.m) * eye - a_hat.mH @ a_hat + symbol(w.S, size, onesided=True), size)
        return _ConvWeights(tiers, fourier)

    def apply_weights(self, z: Tensor, weights: _ConvWeights) -> Tensor:
        if weights.fourier is not None:
            return weights.fourier(z)
        return self.apply_convolutions(z, weights.tiers)

    def apply_convolutions(self, z: Tensor, weights: list[_TierWeights]) -> Tensor:
        r""":math:`Wz` for flat ``z`` by direct circular convolutions with the per-tier kernels of
        ``weights.tiers`` (``weights.T.tiers`` for :math:`W^\top z`), the way the paper-era code
        applies :math:`W`; :meth:`apply_weights` uses the Fourier symbol instead for a single tier."""
        tiers = self.tiers(z)
        rows, skews = [], []  # rows[i] = (A z)_i = A_ii z_i + A_{i,i-1} z_{i-1}
        for i, (zi, w) in enumerate(zip(tiers, weights)):
            c = self.channels[i]
            both = circular_conv(zi, torch.cat([w.A, w.S], dim=0))
            row, skew = both[:, :c], both[:, c:]
            if i > 0:
                row = row + circular_conv(tiers[i - 1], weights[i - 1].down, stride=2)
            rows.append(row)
            skews.append(skew)
        out = []
        for i, (zi, w) in enumerate(zip(tiers, weights)):
            ata = circular_conv(rows[i], transpose_kernel(w.A))
            if w.down is not None:
                nxt = rows[i + 1]
                up = nxt.new_zeros(nxt.shape[0], nxt.shape[1], *self.sizes[i])
                up[:, :, ::2, ::2] = nxt
                ata = ata + circular_conv(up, transpose_kernel(w.down))
            out.append((1 - self.m) * zi - ata + skews[i])
        return self.flatten(tuple(out))

    # -- resolvent ------------------------------------------------------------------------
    def resolvent_factors(
        self, conv_weights: _ConvWeights, alpha: float, onesided: bool = True
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        r"""Block LDU factors of :math:`\hat M = I + \alpha(I - \hat W)` in the Fourier basis.

        Returns ``(lower, diag_inv, upper)``: ``lower[i]`` :math:`= M_{i+1,i} S_i^{-1}`,
        ``diag_inv[i]`` :math:`= S_i^{-1}` (per alias group of tier ``i``, per frequency on the
        last tier), ``upper[i]`` :math:`= S_i^{-1} M_{i,i+1}`. With ``onesided`` (the default)
        only the half that real images need: the frequencies of the real FFT on the last tier,
        the alias groups of :func:`half_group` on the others.
        """
        weights = conv_weights.tiers
        scale = 1 + alpha * self.m
        diag_inv, lower, upper = [], [], []
        correction = None  # Q_i = M_{i,i-1} S_{i-1}^{-1} M_{i-1,i}
        a_hat = symbol(weights[0].A, self.sizes[0])
        for i, w in enumerate(weights):
            c, s = self.channels[i], self.sizes[i]
            eye = torch.eye(c, dtype=a_hat.dtype, device=a_hat.device)
            per_freq = scale * eye + alpha * (a_hat.mH @ a_hat - symbol(w.S, s))
            if correction is not None:
                per_freq = per_freq - correction
            if w.down is None:
                if onesided:
                    per_freq = per_freq.narrow(len(s) - 1, 0, s[-1] // 2 + 1)
                diag_inv.append(torch.linalg.inv(per_freq))
                break
            down_hat = 0.5 * group(symbol(w.down, s).permute(0, 1, 3, 2)).transpose(-1, -2)
            # down_hat: (h, h, c_next, 4c) maps an alias group of tier i to tier i+1.
            schur = group_block_diagonal(per_freq) + alpha * down_hat.mH @ down_hat
            schur_inv = torch.linalg.inv(schur)
            a_hat = symbol(weights[i + 1].A, self.sizes[i + 1])
            coupling = alpha * a_hat.mH @ down_hat  # M_{i+1,i}
            lower.append(coupling @ schur_inv)
            upper.append(schur_inv @ coupling.mH)
            correction = lower[-1] @ coupling.mH
            diag_inv.append(schur_inv)
        if onesided:  # the groups that half_group keeps: columns b <= h/2 of the (h, h) group grid
            keep = [slice(0, self.sizes[i + 1][1] // 2 + 1) for i in range(len(lower))]
            lower = [m[:, k].contiguous() for m, k in zip(lower, keep)]
            upper = [m[:, k].contiguous() for m, k in zip(upper, keep)]
            diag_inv = [m[:, k].contiguous() for m, k in zip(diag_inv, keep)] + diag_inv[len(keep) :]
        return lower, diag_inv, upper

    def build_resolvent(self, conv_weights: _ConvWeights, alpha: float) -> Resolvent:
        if conv_weights.fourier is not None:  # a single tier: one inverse per frequency of W's symbol
            return spectral_resolvent(conv_weights.fourier, alpha)
        lower, diag_inv, upper = self.resolvent_factors(conv_weights, alpha)

        def forward_transform(y: Tensor) -> list[Tensor]:
            return [to_fourier(t, onesided=True) for t in self.tiers(y)]

        def inverse_transform(z_hat: list[Tensor]) -> Tensor:
            return self.flatten(tuple(from_fourier(t, s) for t, s in zip(z_hat, self.sizes)))

        def block_solve(y: Tensor, lo: list[Tensor], dinv: list[Tensor], up: list[Tensor]) -> Tensor:
            y_hat = forward_transform(y)
            eliminated = []
            current = y_hat[0]
            for i in range(len(lo)):
                grouped = half_group(current, self.sizes[i][1])
                eliminated.append(grouped)
                current = y_hat[i + 1] - lo[i] @ grouped
            z = dinv[-1] @ current
            z_hat = [z]
            for i in reversed(range(len(lo))):
                z = half_ungroup(dinv[i] @ eliminated[i] - up[i] @ z, self.sizes[i][1])
                z_hat.insert(0, z)
            return inverse_transform(z_hat)

        def solve(y: Tensor) -> Tensor:
            return block_solve(y.to(diag_inv[0].real.dtype), lower, diag_inv, upper).to(y.dtype)

        adjoints: list[list[Tensor]] = []

        def solve_transpose(y: Tensor) -> Tensor:
            # M^T in the unitary Fourier basis is M^H = U^H D^H L^H. Materialise the adjoint
            # factors once: batched products with conjugate-transposed views copy every matrix.
            if not adjoints:
                adjoints.extend([[m.mH.resolve_conj().contiguous() for m in f] for f in (upper, diag_inv, lower)])
            lo, dinv, up = adjoints
            return block_solve(y.to(diag_inv[0].real.dtype), lo, dinv, up).to(y.dtype)

        return Resolvent(solve, solve_transpose)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, channels={self.channels}, image_size={self.image_size}, "
            f"kernel_size={self.kernel_size}, m={self.m}" + (f", stride={self.stride}" if self.stride != 1 else "")
        )


class SingleConv(MultiConv):
    r"""Single-convolution monotone operator: :class:`MultiConv` with one tier, for 1-D, 2-D or 3-D signals.

    Args:
        in_channels: channels of the input.
        channels: hidden channels :math:`c`.
        image_size: side of a square image, or the input's spatial size: ``(length,)`` for 1-D
            signals, ``(height, width)`` for images, ``(depth, height, width)`` for volumes.
        kernel_size: odd kernel size (along every spatial dimension).
        m: monotonicity margin.
        stride: stride of the input injection; the hidden signal has size ``image_size / stride``.

    Shape:
        - Input: :math:`(N, C_{in}, *S)` with :math:`S` = ``image_size`` (e.g. :math:`(N, C_{in}, H, W)`);
          hidden state flat :math:`(N, c \prod_j s_j)` with :math:`s = S / \text{stride}`,
          :meth:`unflatten` gives :math:`(N, c, *s)`.

    The resolvent solves a :math:`c \times c` system per frequency of the real n-D FFT.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        image_size: int | tuple[int, ...],
        kernel_size: int = 3,
        m: float = 0.1,
        stride: int = 1,
    ) -> None:
        super().__init__(
            in_channels, (POSITIVE_INT.check("channels", channels),), image_size, kernel_size=kernel_size, m=m, stride=stride
        )

    def unflatten(self, z: Tensor) -> Tensor:  # type: ignore[override]
        return self.tiers(z)[0]
