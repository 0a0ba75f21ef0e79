"""Every operator against its dense matrix, with random parameters, in float64."""

import pytest
import torch

from helpers import OPERATOR_NAMES, make_input, make_operator
from mondeq import FullyConnected, MultiConv, SingleConv


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", OPERATOR_NAMES)
@pytest.mark.parametrize("m", [0.05, 0.5, 2.0])
def test_monotone_for_random_parameters(name, m):
    for seed in range(3):
        op = make_operator(name, m=m, seed=seed)
        W = op.to_dense()
        n = op.features
        assert W.shape == (n, n)
        sym = torch.eye(n, dtype=W.dtype) - (W + W.T) / 2
        assert torch.linalg.eigvalsh(sym).min().item() >= m - 1e-6


def test_conv_scales_cannot_break_monotonicity():
    op = make_operator("multi2", m=0.1)
    with torch.no_grad():
        op.A_scale.fill_(-3.0)  # the paper-era g could go negative; here it enters squared
        op.B_scale.fill_(-5.0)
    W = op.to_dense()
    sym = torch.eye(op.features, dtype=W.dtype) - (W + W.T) / 2
    assert torch.linalg.eigvalsh(sym).min().item() >= 0.1 - 1e-6


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_multiply_and_transpose_match_dense(name):
    op = make_operator(name)
    W = op.to_dense()
    z = torch.randn(4, op.features, dtype=torch.float64)
    assert rel(op.multiply(z), z @ W.T) < 1e-8
    assert rel(op.multiply_transpose(z), z @ W) < 1e-8
    # to_dense is built from multiply; check it against the definition independently for FC.
    if isinstance(op, FullyConnected):
        A, B = op.A, op.B
        expected = (1 - op.m) * torch.eye(op.features, dtype=A.dtype) - A.T @ A + B - B.T
        assert rel(W, expected) < 1e-12


def test_single_conv_matches_explicit_circular_convolution():
    """W z built from torch's own circular-padded Conv2d, independent of our conv helpers."""
    op = make_operator("single")
    w = op.weights().tiers[0]
    z = torch.randn(2, op.features, dtype=torch.float64)
    img = op.unflatten(z)

    def conv(x, kernel):
        layer = torch.nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular", bias=False).double()
        layer.weight.data.copy_(kernel)
        return layer(x)

    def conv_t(y, kernel):  # adjoint by autograd
        x = torch.zeros_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(conv(x, kernel), x, y)
        return g

    expected = (1 - op.m) * img - conv_t(conv(img, w.A), w.A) + conv(img, w.S)
    assert rel(op.multiply(z).reshape(img.shape), expected.detach()) < 1e-10


def test_strided_injection_matches_torch_conv2d():
    """U x with stride 2: torch's circular-padded strided Conv2d with bias, on a 12 x 12 image."""
    op = make_operator("single-strided")
    x = make_input(op)
    layer = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="circular").double()
    layer.load_state_dict(op.U.state_dict())
    expected = layer(x)
    assert expected.shape == (3, 3, 6, 6)
    assert rel(op.inject(x), expected.flatten(1).detach()) < 1e-12


@pytest.mark.parametrize("name", OPERATOR_NAMES)
@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_resolvent_matches_dense(name, alpha):
    op = make_operator(name)
    W = op.to_dense()
    n = op.features
    M = (1 + alpha) * torch.eye(n, dtype=W.dtype) - alpha * W
    y = torch.randn(5, n, dtype=torch.float64)
    resolvent = op.resolvent(alpha)
    assert rel(resolvent.solve(y), torch.linalg.solve(M, y.T).T) < 1e-8
    assert rel(resolvent.T.solve(y), torch.linalg.solve(M.T, y.T).T) < 1e-8


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_transposed_frozen_operator_matches_dense(name):
    r"""``frozen.T`` multiplies by :math:`W^\top` and solves with :math:`(I + \alpha(I - W^\top))^{-1}`."""
    op, alpha = make_operator(name), 0.7
    W = op.to_dense()
    M_t = (1 + alpha) * torch.eye(op.features, dtype=W.dtype) - alpha * W.T
    z = torch.randn(4, op.features, dtype=torch.float64)
    transposed = op.frozen(alpha).T
    assert transposed.alpha == alpha
    assert rel(transposed.multiply(z), z @ W) < 1e-8
    assert rel(transposed.resolvent.solve(z), torch.linalg.solve(M_t, z.T).T) < 1e-8
    assert rel(op.apply_weights(z, op.weights().T), z @ W) < 1e-8
    assert op.frozen(alpha, with_resolvent=False).T.resolvent is None


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_transposing_twice_gives_the_original_maps(name):
    op = make_operator(name)
    frozen = op.frozen(0.7)
    twice = frozen.T.T
    z = torch.randn(4, op.features, dtype=torch.float64)
    assert twice.alpha == frozen.alpha
    assert torch.equal(twice.multiply(z), frozen.multiply(z))
    assert torch.equal(twice.resolvent.solve(z), frozen.resolvent.solve(z))
    assert torch.equal(twice.T.multiply(z), frozen.T.multiply(z))


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_frozen_maps_are_cached_until_parameters_change(name):
    op = make_operator(name)
    first = op.frozen(1.0)
    assert op.frozen(1.0) is first
    with torch.no_grad():
        next(op.parameters()).mul_(1.1)
    second = op.frozen(1.0)
    assert second is not first
    z = torch.randn(2, op.features, dtype=torch.float64)
    assert rel(second.multiply(z), op.multiply(z)) < 1e-12


def test_structured_views():
    op = make_operator("multi3")
    z = torch.randn(2, op.features, dtype=torch.float64)
    tiers = op.unflatten(z)
    assert [t.shape for t in tiers] == [(2, 2, 12, 12), (2, 2, 6, 6), (2, 2, 3, 3)]
    assert torch.equal(op.flatten(tiers), z)
    single = make_operator("single")
    assert single.unflatten(torch.zeros(2, single.features, dtype=torch.float64)).shape == (2, 3, 6, 6)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: FullyConnected(4, 5, m=0.0), "m must be a positive finite number"),
        (lambda: FullyConnected(4, 5, m=-1.0), "m must be a positive finite number"),
        (lambda: SingleConv(1, 4, 8, m=-0.1), "m must be a positive finite number"),
        (lambda: SingleConv(1, 4, 8, kernel_size=4), "odd"),
        (lambda: MultiConv(1, (4, 4, 4, 4), 28), "tier 2 has side 7"),
        (lambda: MultiConv(1, (4, 4), 14, kernel_size=9), "kernel_size"),
        (lambda: SingleConv(1, 4, 15, stride=2), "not a multiple of the injection stride 2"),
        (lambda: MultiConv(1, (4, 4), 12, stride=4), r"image_size 12 \(stride 4\) does not support 2 tiers: tier 0 has side 3"),
        (lambda: FullyConnected(4, 5).resolvent(0.0), "alpha must be > 0"),
        (lambda: MultiConv(1, (4, 4), (16,)), r"2 tiers need 2-D images, but image_size \(16,\) has 1 dimension"),
        (lambda: MultiConv(1, (4, 4), (8, 8, 8)), "use one tier"),
        (lambda: SingleConv(1, 4, (8, 8, 8, 8)), r"\(depth, height, width\), got \(8, 8, 8, 8\)"),
        (lambda: SingleConv(1, 4, (2,)), "side 2, which must be >= kernel_size 3"),
    ],
)
def test_bad_construction_raises(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("name, shape", [("single-1d", (2, 3, 8)), ("single-3d", (2, 2, 4, 3, 5))])
def test_single_conv_in_one_and_three_dimensions(name, shape):
    """The hidden state's structured view, the input check, and W against the same circular
    convolutions done directly with torch's Conv1d / Conv3d and explicit padding."""
    op = make_operator(name)
    z = torch.randn(2, op.features, dtype=torch.float64)
    assert op.unflatten(z).shape == shape
    n = len(shape) - 2
    w = op.weights().tiers[0]
    conv = {1: torch.nn.functional.conv1d, 3: torch.nn.functional.conv3d}[n]

    def circular(x, kernel):
        return conv(torch.nn.functional.pad(x, (1,) * (2 * n), mode="circular"), kernel)

    image = op.unflatten(z)
    a = circular(image, w.A)
    a_t = circular(a, w.A.transpose(0, 1).flip(tuple(range(2, 2 + n))))
    expected = (1 - op.m) * image - a_t + circular(image, w.S)
    torch.testing.assert_close(op.multiply(z), expected.flatten(1), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=rf"expects input of shape \(batch, {op.in_channels}, "):
        op.check_input(torch.zeros(2, op.in_channels, *shape[2:], 1, dtype=torch.float64))  # one spatial dim too many
