"""Bad input raises an error whose message names the problem."""

import pytest
import torch

from helpers import make_input, make_operator
from mondeq import FullyConnected, MonDEQ


@pytest.fixture
def conv_layer():
    return MonDEQ(make_operator("single"))


def test_wrong_channel_count(conv_layer):
    with pytest.raises(ValueError, match=r"in_channels=2.*got \(3, 1, 6, 6\)"):
        conv_layer(torch.randn(3, 1, 6, 6, dtype=torch.float64))


def test_wrong_spatial_shape(conv_layer):
    with pytest.raises(ValueError, match="image_size=6"):
        conv_layer(torch.randn(3, 2, 7, 7, dtype=torch.float64))


def test_wrong_feature_count():
    layer = MonDEQ(make_operator("fc"))
    with pytest.raises(ValueError, match="6 features per sample"):
        layer(torch.randn(3, 5, dtype=torch.float64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_input(conv_layer, bad):
    x = make_input(conv_layer.linear)
    x[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        conv_layer(x)


def test_dtype_mismatch(conv_layer):
    with pytest.raises(TypeError, match=r"dtype torch.float32 does not match .*torch.float64"):
        conv_layer(make_input(conv_layer.linear).float())


def test_non_tensor_input(conv_layer):
    with pytest.raises(TypeError, match="torch.Tensor"):
        conv_layer([[1.0, 2.0]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0.0}, "alpha must be a positive"),
        ({"alpha": -1.0}, "alpha must be a positive"),
        ({"tol": 0.0}, "tol must be a positive"),
        ({"tol": float("nan")}, "tol must be a positive"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"anderson": -1}, "anderson"),
        ({"solver": "broyden"}, "unknown solver 'broyden'"),
        ({"activation": "gelu"}, "unknown activation 'gelu'"),
    ],
)
def test_bad_layer_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MonDEQ(FullyConnected(4, 5), **kwargs)


def test_not_an_operator():
    with pytest.raises(TypeError, match="MonotoneOperator"):
        MonDEQ(torch.nn.Linear(3, 3))


def test_float32_works():
    layer = MonDEQ(FullyConnected(4, 8, m=0.5), tol=1e-5)
    z = layer(torch.randn(2, 4))
    assert z.dtype == torch.float32 and layer.stats.forward_converged
