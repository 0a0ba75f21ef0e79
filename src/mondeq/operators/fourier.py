r"""Per-frequency linear maps of real signals: the Fourier side of circular convolutions.

A circular convolution from :math:`c_{in}` to :math:`c_{out}` channels of real signals on a grid
``size`` (1-, 2- or 3-D) is, in the unitary n-D DFT, one :math:`c_{out} \times c_{in}` matrix
:math:`M(f)` per frequency; real signals need only the frequencies of the real FFT (the last axis
halved to :math:`K = N/2 + 1`). :class:`SpectralMap` applies :math:`x \mapsto F^{-1} M F x`: the
product by :math:`W` of a single-tier operator and its resolvent are such maps.

It has two equal implementations (float64 results agree to about 1e-14), picked by the grid:

* **FFTs** (:func:`to_fourier`, :func:`from_fourier`): any size.
* **The DFT as matrix products**, for small grids (:func:`uses_matrix_dft`: up to 32x32 images).
  With :math:`L` the points of the leading axes and the flat state ``(B, c N)`` read as it lies:

  1. along the last axis, the real DFT as one batched product with a :math:`2K \times N` matrix
     (rows: real and imaginary parts) that reads the batch-first state as a transposed operand;
  2. along the leading axes, the complex DFT as one product with a real :math:`2L \times 2L` matrix
     whose output rows are ordered (real/imaginary, point), so each part is a contiguous
     ``(L K, B, c)`` block;
  3. per frequency four real products,
     :math:`Z_r = Y_r A_r - Y_i A_i,\; Z_i = Y_r A_i + Y_i A_r` with :math:`A = M^\top`;
  4. the two inverses in reverse order, and one copy back to the batch-first layout.

  The FFT path spends its time on the transforms of strided batches and the layout copies around
  each product; here every step is a dense matrix product on the layout the previous one wrote
  (``mondeq bench --only step_profile`` measures both).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Resolvent

__all__ = ["MATRIX_DFT_MAX_SIDE", "SpectralMap", "from_fourier", "spectral_resolvent", "to_fourier", "uses_matrix_dft"]

#: Largest last side, and most points on the leading axes, of a grid transformed by matrix products
#: instead of FFTs: the products cost :math:`O(N)` per value against the FFT's :math:`O(\log N)`. On a
#: 2-core Xeon (AVX-512) at batch 128 one map by products took 0.41x the FFTs' time at 14x14 (28
#: channels), 0.46x at 28x28, 0.57x at 32x32, 0.93x at 48x48 and 1.35x at 64x64 (16 channels).
MATRIX_DFT_MAX_SIDE = 32


def uses_matrix_dft(size: tuple[int, ...]) -> bool:
    """Whether :class:`SpectralMap` transforms signals on the grid ``size`` by matrix products: its last
    side and the points of its leading axes at most :data:`MATRIX_DFT_MAX_SIDE` (2-D: both sides)."""
    return size[-1] <= MATRIX_DFT_MAX_SIDE and math.prod(size[:-1]) <= MATRIX_DFT_MAX_SIDE


def batched_fft(transform: Callable[..., Tensor], x: Tensor, ndim: int, **kwargs: Any) -> Tensor:
    """``transform(x, dim=(0, ..., ndim - 1), norm="ortho", **kwargs)`` for ``x`` with the batch last.

    FFT libraries reject an empty batch: it is padded with one zero sample, dropped again.
    """
    dims = tuple(range(ndim))
    if x.shape[-1] == 0:
        return transform(F.pad(x, (0, 1)), dim=dims, norm="ortho", **kwargs)[..., :0]
    return transform(x, dim=dims, norm="ortho", **kwargs)


def to_fourier(image: Tensor, onesided: bool) -> Tensor:
    """Unitary n-D DFT of ``(B, c, *size)`` signals in the layout ``(*frequencies, c, B)``; with
    ``onesided`` the last frequency axis has ``size[-1] // 2 + 1`` entries (real FFT).

    Transforming the leading dims of a permuted view is markedly faster on CPU than the default
    layout, and leaves frequencies leading, as the per-frequency matrix products want.
    """
    n = image.dim() - 2
    fft = torch.fft.rfftn if onesided else torch.fft.fftn
    # contiguous: batched complex matmul on a strided spectrum is about twice as slow
    return batched_fft(fft, image.permute(*range(2, 2 + n), 1, 0), n).contiguous()


def from_fourier(spectrum: Tensor, size: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`to_fourier` for spectra of real signals of ``size`` (full or one-sided): ``(B, c, *size)``."""
    n = len(size)
    half = spectrum.narrow(n - 1, 0, size[-1] // 2 + 1)
    return batched_fft(torch.fft.irfftn, half, n, s=tuple(size)).permute(n + 1, n, *range(n))


def _real_form(c: Tensor) -> Tensor:
    r"""The real form of :math:`v \mapsto C v` (complex ``c``, ``(L, L)``) on vectors split into real and
    imaginary parts: ``(output part, output point, input point, input part)``, each ``(2, L, L, 2)``
    entry the coefficient of an input part in an output part."""
    n = c.shape[0]
    out = c.real.new_empty(2, n, n, 2)
    out[0, :, :, 0], out[0, :, :, 1] = c.real, -c.imag
    out[1, :, :, 0], out[1, :, :, 1] = c.imag, c.real
    return out


@torch.compiler.disable  # built once per grid, outside any compiled graph
@functools.lru_cache(maxsize=64)
def _dft_matrices(
    size: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
    r"""``(last, lead, lead_inverse, last_inverse)``: the unitary real DFT along the last axis
    :math:`(2K, N)` (rows: real parts, then imaginary parts), the complex DFT over the leading axes as a
    real :math:`(2L, 2L)` matrix (input (point, part), output (part, point)), its inverse (input (part,
    point), output (point, part)); ``None`` for 1-D signals; the inverse real DFT :math:`(2K, N)`
    (the map :func:`torch.fft.irfft` applies, imaginary parts of the real frequencies ignored).
    Computed in float64 from torch's own transforms of the unit vectors."""
    n = size[-1]
    k = n // 2 + 1
    eye = torch.eye(n, dtype=torch.float64)
    spectrum = torch.fft.rfft(eye, dim=1, norm="ortho")  # (N, K): signal e_n -> its spectrum
    last = torch.cat([spectrum.real.T, spectrum.imag.T])
    unit = torch.eye(k, dtype=torch.float64)
    real, imaginary = torch.complex(unit, 0 * unit), torch.complex(0 * unit, unit)
    last_inverse = torch.cat([torch.fft.irfft(part, n=n, norm="ortho") for part in (real, imaginary)])
    lead = lead_inverse = None
    lead_size = size[:-1]
    if lead_size:
        points = math.prod(lead_size)
        basis = torch.eye(points, dtype=torch.complex128).view(points, *lead_size)
        dft = torch.fft.fftn(basis, dim=tuple(range(1, 1 + len(lead_size))), norm="ortho").reshape(points, points).T
        lead = _real_form(dft).reshape(2 * points, 2 * points)
        # the inverse reads (part, point) and writes (point, part)
        lead_inverse = _real_form(dft.mH).permute(1, 0, 3, 2).reshape(2 * points, 2 * points)

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(dtype=dtype, device=device).contiguous()

    return cast(last), cast(lead), cast(lead_inverse), cast(last_inverse)  # type: ignore[return-value]


class SpectralMap:
    r""":math:`x \mapsto F^{-1} M F x` for real signals on the grid ``size``, given the per-frequency
    matrices of the real FFT's frequencies.

    Args:
        matrices: complex ``(*size[:-1], size[-1] // 2 + 1, c_out, c_in)``, differentiable.
        size: the signals' spatial size, 1 to 3 axes.
        matrix_dft: transform by matrix products (``True``) or FFTs (``False``); ``None``: as
            :func:`uses_matrix_dft` decides for ``size``.

    Calling it maps flat ``(B, c_in * prod(size))`` signals (channels first, as
    ``(B, c_in, *size)``) to flat ``(B, c_out * prod(size))`` ones, differentiably in both arguments.
    :attr:`T` is the adjoint map (:math:`M(f)^H`).
    """

    def __init__(self, matrices: Tensor, size: tuple[int, ...], matrix_dft: bool | None = None) -> None:
        self.matrices = matrices
        self.size = tuple(size)
        self.matrix_dft = uses_matrix_dft(self.size) if matrix_dft is None else matrix_dft
        #: The DFT matrices of :func:`_dft_matrices` in the matrices' real dtype (built outside any compiled region).
        self._dft = _dft_matrices(self.size, matrices.real.dtype, matrices.device) if self.matrix_dft else None
        self._parts: tuple[Tensor, Tensor] | None = None

    @property
    def T(self) -> SpectralMap:
        r"""The adjoint map, per frequency :math:`M(f)^H`."""
        return SpectralMap(self.matrices.mH.resolve_conj().contiguous(), self.size, self.matrix_dft)

    def __call__(self, x: Tensor) -> Tensor:
        c_out, c_in = self.matrices.shape[-2:]
        if not self.matrix_dft:
            spectrum = to_fourier(x.reshape(x.shape[0], c_in, *self.size), onesided=True)
            return from_fourier(self.matrices @ spectrum, self.size).flatten(1)
        return self._by_matrices(x, c_out, c_in)

    def _real_parts(self) -> tuple[Tensor, Tensor]:
        r""":math:`(A_r, A_i)` of :math:`A = M^\top`, ``(frequencies, c_in, c_out)`` each."""
        if self._parts is None:
            c_out, c_in = self.matrices.shape[-2:]
            flat = self.matrices.reshape(-1, c_out, c_in).transpose(-1, -2)
            self._parts = (flat.real.contiguous(), flat.imag.contiguous())
        return self._parts

    def _by_matrices(self, x: Tensor, c_out: int, c_in: int) -> Tensor:
        n = self.size[-1]
        points = math.prod(self.size[:-1])
        k = n // 2 + 1
        batch = x.shape[0]
        last, lead, lead_inverse, last_inverse = self._dft  # type: ignore[misc]
        columns = batch * c_in
        signal = x.reshape(columns, points, n).permute(1, 2, 0)  # (L, N, B c_in): a transposed operand
        spectrum = torch.bmm(last.expand(points, 2 * k, n), signal)  # (L, 2K, B c_in), rows (part, k)
        if lead is not None:
            spectrum = torch.mm(lead, spectrum.view(2 * points, k * columns))  # rows (part, L)
        parts = spectrum.view(2, points * k, batch, c_in)
        a_real, a_imag = self._real_parts()
        # in place on the products' fresh outputs (their backward needs only the inputs): no copy of the first term
        real = torch.bmm(parts[0], a_real).baddbmm_(parts[1], a_imag, alpha=-1)  # (L K, B, c_out)
        imag = torch.bmm(parts[0], a_imag).baddbmm_(parts[1], a_real)
        width = k * batch * c_out
        if lead_inverse is None:
            mapped = torch.cat([real.view(1, k, -1), imag.view(1, k, -1)], dim=1)
        else:
            mapped = torch.mm(lead_inverse[:, :points], real.view(points, width))
            mapped.addmm_(lead_inverse[:, points:], imag.view(points, width))
        mapped = mapped.view(points, 2 * k, batch * c_out)  # rows (L, part, k)
        signal_out = torch.bmm(mapped.transpose(1, 2), last_inverse.expand(points, 2 * k, n))  # (L, B c_out, N)
        return signal_out.permute(1, 0, 2).reshape(batch, c_out * points * n)


def spectral_resolvent(weights: SpectralMap, alpha: float) -> Resolvent:
    r"""The resolvent :math:`(I + \alpha(I - W))^{-1}` of a :math:`W` that is a product per frequency
    (``weights``): one inverse :math:`((1 + \alpha) I - \alpha W(f))^{-1}` per frequency; the transpose (the
    adjoint matrices) is built on first use."""
    symbol = weights.matrices
    eye = torch.eye(symbol.shape[-1], dtype=symbol.dtype, device=symbol.device)
    inverse = SpectralMap(torch.linalg.inv((1 + alpha) * eye - alpha * symbol), weights.size, weights.matrix_dft)
    dtype = symbol.real.dtype
    adjoint: list[SpectralMap] = []

    def solve_transpose(y: Tensor) -> Tensor:
        if not adjoint:
            adjoint.append(inverse.T)
        return adjoint[0](y.to(dtype)).to(y.dtype)

    return Resolvent(lambda y: inverse(y.to(dtype)).to(y.dtype), solve_transpose)
