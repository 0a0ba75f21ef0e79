r"""Parametrisations that bound the spectral norm of a weight: :class:`SpectralBound` (a power-iteration
estimate, for regularisation) and :class:`NormBound` / :class:`ConvNormBound` (the exact norm, for a
bound that must hold for every parameter value: Lipschitz-bounded classifiers)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..operators.convolutional import symbol

__all__ = ["ConvNormBound", "NormBound", "SpectralBound", "linear_norm", "strided_conv_norm"]


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


def linear_norm(weight: Tensor) -> Tensor:
    r""":math:`\|A\|_2` of a dense ``(out, in)`` weight: its largest singular value."""
    return torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2)


def strided_conv_norm(kernel: Tensor, image_shape: tuple[int, ...], stride: int = 1) -> Tensor:
    r""":math:`\|A\|_2` of the circular convolution with ``kernel`` ``(out, in, k, ...)`` on signals of
    ``image_shape``, sampled every ``stride`` pixels.

    In the unitary Fourier basis the convolution is the per-frequency matrix :math:`\hat K(f)`, and
    subsampling by :math:`s` adds the :math:`s^d` frequencies that alias to one output frequency,
    divided by :math:`s^{d/2}`: the norm is the largest, over the output frequencies, of the norm of
    the :math:`c_{out} \times s^d c_{in}` block :math:`[\hat K(f_1) \cdots \hat K(f_{s^d})] / s^{d/2}`.
    """
    n = len(image_shape)
    per_frequency = symbol(kernel, tuple(image_shape))  # (*image_shape, out, in)
    out, inp = per_frequency.shape[-2:]
    coarse = [side // stride for side in image_shape]
    # frequency f along each dim = a * coarse + g: split each frequency axis into (alias a, output g)
    split = per_frequency.reshape(*[v for side in coarse for v in (stride, side)], out, inp)
    aliases = tuple(range(0, 2 * n, 2))
    outputs = tuple(range(1, 2 * n, 2))
    blocks = split.permute(*outputs, 2 * n, *aliases, 2 * n + 1).reshape(-1, out, stride**n * inp)
    return torch.linalg.matrix_norm(blocks, ord=2).max() / stride ** (n / 2)


class NormBound(nn.Module):
    r"""Parametrisation :math:`A \mapsto A \cdot \min(1, c / \|A\|_2)` with the exact norm of a dense
    weight: :math:`\|A\|_2 \le c` for every value of the parameter (``torch.nn.utils.parametrize``).

    Args:
        bound: :math:`c > 0`.
    """

    def __init__(self, bound: float) -> None:
        super().__init__()
        self.bound = float(bound)

    def norm(self, weight: Tensor) -> Tensor:
        return linear_norm(weight)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * torch.clamp(self.bound / self.norm(weight).clamp_min(1e-30), max=1.0)


class ConvNormBound(NormBound):
    """:class:`NormBound` for the kernel of a circular convolution on ``image_shape`` with ``stride``."""

    def __init__(self, bound: float, image_shape: tuple[int, ...], stride: int = 1) -> None:
        super().__init__(bound)
        self.image_shape, self.stride = tuple(image_shape), stride

    def norm(self, weight: Tensor) -> Tensor:
        return strided_conv_norm(weight, self.image_shape, self.stride)
