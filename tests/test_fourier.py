"""The per-frequency maps of real signals: the DFT as matrix products against the FFT path, in float64."""

import math

import pytest
import torch

from mondeq.operators import MultiConv, SingleConv
from mondeq.operators.fourier import MATRIX_DFT_MAX_SIDE, SpectralMap, uses_matrix_dft

SIZES = [(9,), (8,), (6, 6), (7, 5), (4, 10), (3, 4, 5), (4, 4, 4)]


def fft_map(matrices: torch.Tensor, size: tuple[int, ...]) -> SpectralMap:
    return SpectralMap(matrices, size, matrix_dft=False)


def random_matrices(size, c_out, c_in, generator):
    half = (*size[:-1], size[-1] // 2 + 1)
    real = torch.randn(*half, c_out, c_in, 2, dtype=torch.float64, generator=generator)
    return torch.view_as_complex(real)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [(3, 3), (2, 5)])
def test_matrix_dft_equals_fft(size, channels):
    generator = torch.Generator().manual_seed(0)
    c_out, c_in = channels
    matrices = random_matrices(size, c_out, c_in, generator)
    x = torch.randn(4, c_in * math.prod(size), dtype=torch.float64, generator=generator)
    fast, reference = SpectralMap(matrices, size), fft_map(matrices, size)
    assert fast.matrix_dft
    torch.testing.assert_close(fast(x), reference(x), rtol=0, atol=1e-12)
    y = torch.randn(4, c_out * math.prod(size), dtype=torch.float64, generator=generator)
    torch.testing.assert_close(fast.T(y), reference.T(y), rtol=0, atol=1e-12)
    # the adjoint: <M x, y> = <x, M^T y>
    torch.testing.assert_close((fast(x) * y).sum(), (x * fast.T(y)).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(7,), (6, 5), (3, 4, 4)])
def test_matrix_dft_gradients_equal_fft(size):
    generator = torch.Generator().manual_seed(1)
    matrices = random_matrices(size, 3, 2, generator)
    x = torch.randn(3, 2 * math.prod(size), dtype=torch.float64, generator=generator)
    weight = torch.randn(3, 3 * math.prod(size), dtype=torch.float64, generator=generator)
    grads = []
    for build in (SpectralMap, fft_map):
        m, v = matrices.clone().requires_grad_(), x.clone().requires_grad_()
        (build(m, size)(v) * weight).sum().backward()
        grads.append((m.grad, v.grad))
    for fast, reference in zip(*grads):
        torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)


def test_matrix_dft_empty_batch_and_float32():
    matrices = random_matrices((6, 6), 2, 2, torch.Generator().manual_seed(2)).to(torch.complex64)
    assert SpectralMap(matrices, (6, 6))(torch.zeros(0, 72)).shape == (0, 72)
    x = torch.randn(5, 72)
    torch.testing.assert_close(SpectralMap(matrices, (6, 6))(x), fft_map(matrices, (6, 6))(x), rtol=1e-4, atol=1e-5)


def test_large_grids_use_the_fft():
    assert uses_matrix_dft((MATRIX_DFT_MAX_SIDE, MATRIX_DFT_MAX_SIDE)) and uses_matrix_dft((4, 8, 8))
    assert not uses_matrix_dft((MATRIX_DFT_MAX_SIDE + 1, 4)) and not uses_matrix_dft((4, MATRIX_DFT_MAX_SIDE + 1))
    assert not uses_matrix_dft((6, 6, 6))


@pytest.mark.parametrize(
    "build",
    [
        lambda: SingleConv(2, 3, 8, kernel_size=3, m=0.3),
        lambda: SingleConv(1, 3, (12,), kernel_size=5, m=0.3),
        lambda: SingleConv(1, 2, (4, 5, 6), kernel_size=3, m=0.3),
        lambda: SingleConv(1, 3, (8, 6), kernel_size=3, m=0.3, stride=2),
        lambda: SingleConv(1, 1, (34, 34), kernel_size=3, m=0.3),  # over the matrix DFT's side: FFTs
        lambda: SingleConv(1, 2, (6, 6, 6), kernel_size=3, m=0.3),  # 36 leading points: FFTs
    ],
)
def test_single_conv_multiply_and_resolvent_equal_dense(build):
    """The operator's W z, W^T z and resolvent (both paths, as the grid picks) against the dense matrices."""
    torch.manual_seed(0)
    op = build().double()
    dense = op.to_dense()
    n = op.features
    z = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(op.multiply(z), z @ dense.T, rtol=0, atol=1e-11)
    torch.testing.assert_close(op.multiply_transpose(z), z @ dense, rtol=0, atol=1e-11)
    alpha = 0.7
    m = torch.eye(n, dtype=torch.float64) + alpha * (torch.eye(n, dtype=torch.float64) - dense)
    resolvent = op.resolvent(alpha)
    torch.testing.assert_close(resolvent.solve(z), torch.linalg.solve(m, z.T).T, rtol=0, atol=1e-11)
    torch.testing.assert_close(resolvent.T.solve(z), torch.linalg.solve(m.T, z.T).T, rtol=0, atol=1e-11)


def test_multi_conv_unchanged_by_the_matrix_dft():
    """Several tiers keep the FFT block solve; their W z against the dense matrix."""
    torch.manual_seed(0)
    op = MultiConv(1, (2, 3), 8, kernel_size=3, m=0.3).double()
    z = torch.randn(2, op.features, dtype=torch.float64)
    torch.testing.assert_close(op.multiply(z), z @ op.to_dense().T, rtol=0, atol=1e-11)
