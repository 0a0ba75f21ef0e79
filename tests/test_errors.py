"""Bad input raises an error whose message names the problem."""

import warnings

import pytest
import torch

from helpers import make_input, make_operator
from mondeq import ConvergenceWarning, FullyConnected, MonDEQ, MultiConv, SingleConv, SolverOptions, get_solver
from mondeq.errors import StepSizeWarning, ignore_convergence_warnings
from mondeq.solvers import SplittingMethod


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_input_among_huge_values(bad):
    # float32 values near the maximum sum to inf: the quick finite-sum test must fall back to the full one
    layer = MonDEQ(make_operator("fc").float())
    x = torch.full((2, 6), 3e38)
    layer.check_input(x)  # finite: accepted although its sum overflows
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer.check_input(x)


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
        ({"tol": 0.0}, r"tol must be a number in \(0, 1\)"),
        ({"tol": float("nan")}, r"tol must be a number in \(0, 1\)"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"anderson": -1}, "anderson"),
        ({"solver": "broyden"}, "unknown solver 'broyden'"),
        ({"activation": "gelu"}, "unknown activation 'gelu'"),
    ],
)
def test_bad_layer_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MonDEQ(FullyConnected(4, 5), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"solver": "broyden"}, "unknown solver 'broyden'"),
        ({"tol": 0.0}, r"tol must be a number in \(0, 1\)"),
        ({"tol": float("inf")}, r"tol must be a number in \(0, 1\)"),
        ({"tol": "1e-4"}, r"tol must be a number in \(0, 1\)"),
        ({"tol": 1e10}, r"tol must be a number in \(0, 1\)"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"max_iter": 2.5}, "max_iter must be a positive integer"),
        ({"anderson": -1}, "anderson .* non-negative integer"),
        ({"anderson": 1.0}, "anderson .* non-negative integer"),
    ],
)
def test_bad_solver_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SolverOptions(**kwargs)


def test_solver_options_name_a_registered_method():
    assert SolverOptions(get_solver("peaceman-rachford")).solver == SolverOptions("PR").solver == "pr"

    class Unregistered(SplittingMethod):
        name = "mine"

    with pytest.raises(ValueError, match="Unregistered is not in mondeq.solvers.SOLVERS"):
        SolverOptions(Unregistered())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backward_tol": -1.0}, r"backward_tol must be a number in \(0, 1\)"),
        ({"backward_tol": 1.0}, r"backward_tol must be a number in \(0, 1\)"),
        ({"backward_max_iter": 0}, "backward_max_iter must be a positive integer"),
        ({"alpha": float("nan")}, "alpha must be a positive finite"),
        ({"solver": "newton"}, "unknown solver 'newton'"),
    ],
)
def test_bad_settings_name_the_argument_and_change_nothing(kwargs, match):
    layer = MonDEQ(FullyConnected(4, 5), tol=1e-3)
    before = layer.forward_options, layer.backward_options, layer.alpha
    with pytest.raises(ValueError, match=match):
        MonDEQ(FullyConnected(4, 5), **kwargs)
    with pytest.raises(ValueError, match=match):
        layer.configure(tol=1e-6, **kwargs)
    with pytest.raises(ValueError, match=match), layer.options(**kwargs):
        pass
    assert (layer.forward_options, layer.backward_options, layer.alpha) == before
    with pytest.raises(TypeError, match="tolerance"):
        layer.configure(tolerance=1e-6)
    with pytest.raises(TypeError, match="method"):
        layer.configure(method="pr")  # one name: solver


def test_ignore_convergence_warnings_silences_only_them():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ignore_convergence_warnings():
            warnings.warn("not converged", ConvergenceWarning, stacklevel=1)
            warnings.warn("clamped", StepSizeWarning, stacklevel=1)
            warnings.warn("old", DeprecationWarning, stacklevel=1)
        warnings.warn("not converged", ConvergenceWarning, stacklevel=1)
    assert [w.category for w in caught] == [StepSizeWarning, DeprecationWarning, ConvergenceWarning]


def test_not_an_operator():
    with pytest.raises(TypeError, match="MonotoneOperator"):
        MonDEQ(torch.nn.Linear(3, 3))


def test_float32_works():
    layer = MonDEQ(FullyConnected(4, 8, m=0.5), tol=1e-5)
    z = layer(torch.randn(2, 4))
    assert z.dtype == torch.float32 and layer.stats.forward.converged


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: FullyConnected(0, 5), ValueError, "in_features must be a positive integer, got 0"),
        (lambda: FullyConnected(4, -1), ValueError, "width must be a positive integer, got -1"),
        (lambda: FullyConnected(4.0, 5), TypeError, "in_features must be a positive integer, got float"),
        (lambda: FullyConnected(4, True), TypeError, "width must be a positive integer, got bool"),
        (lambda: SingleConv(1, 2.5, 8), TypeError, "channels must be a positive integer, got float"),
        (lambda: SingleConv(0, 2, 8), ValueError, "in_channels must be a positive integer"),
        (lambda: SingleConv(1, 2, -8), ValueError, "image_size must be a positive integer"),
        (lambda: SingleConv(1, 2, 8, kernel_size=-3), ValueError, "kernel_size must be a positive integer"),
        (lambda: MultiConv(1, 3, 8), TypeError, "channels must be a tuple or list"),
        (lambda: MultiConv(1, (), 8), ValueError, "channels must name at least one tier"),
        (lambda: MultiConv(1, (2, 0), 8), ValueError, r"channels\[1\] must be a positive integer, got 0"),
        (lambda: MultiConv(1, (2, "3"), 8), TypeError, r"channels\[1\] must be a positive integer, got str"),
        (lambda: FullyConnected(4, 5, m=float("inf")), ValueError, "m must be a positive finite number, got inf"),
        (lambda: FullyConnected(4, 5, m=float("nan")), ValueError, "m must be a positive finite number, got nan"),
        (lambda: SingleConv(1, 2, 8, m="0.1"), TypeError, "m must be a positive finite number, got str"),
    ],
)
def test_bad_operator_arguments_name_the_argument(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_setting_a_bad_margin_later_raises():
    op = FullyConnected(4, 5)
    with pytest.raises(ValueError, match="m must be a positive finite number"):
        op.m = float("inf")
    assert op.m == 0.1


@pytest.mark.parametrize("alpha", [1e39, 1e300])
def test_step_size_beyond_the_dtype_is_refused(alpha):
    layer = MonDEQ(FullyConnected(4, 5), alpha=alpha)  # float32: the resolvent would overflow
    with pytest.raises(ValueError, match=r"step size alpha must be > 0 and at most 3.4e\+38 \(torch.float32\)"):
        layer(torch.randn(2, 4))


@pytest.mark.parametrize("solver", ["pr", "dr"])  # fb clamps alpha to its convergence bound
def test_huge_step_size_stays_finite_and_warns(solver):
    op = make_operator("fc")
    layer = MonDEQ(op, solver=solver, alpha=1e300, max_iter=30)
    with pytest.warns(ConvergenceWarning, match="reached max_iter"):
        z = layer(make_input(op))
    assert torch.isfinite(z).all()
