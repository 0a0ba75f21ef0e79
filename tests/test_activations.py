"""Activations as proximal operators: prox of alpha*f for alpha != 1, derivatives, registry."""

import pytest
import torch

from mondeq import LeakyReLU, ProximalActivation, get_activation
from mondeq.activations import ACTIVATIONS

NAMES = sorted(ACTIVATIONS)
X = torch.linspace(-8, 8, 401, dtype=torch.float64)


def inverse_by_bisection(act: ProximalActivation, z: torch.Tensor) -> torch.Tensor:
    """sigma^{-1}(z) by bisection on sigma itself: independent of the classes' inverse()."""
    lo, hi = torch.full_like(z, -60.0), torch.full_like(z, 60.0)
    for _ in range(200):
        mid = (lo + hi) / 2
        above = act(mid) > z
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softplus", "leaky_relu"])
@pytest.mark.parametrize("alpha", [0.2, 0.7, 1.5, 4.0])
def test_prox_solves_its_optimality_condition(name, alpha):
    """z = prox_{alpha f}(x)  <=>  (1 - alpha) z + alpha sigma^{-1}(z) = x."""
    act = get_activation(name)
    z = act.prox(X, alpha)
    # Away from the ends of sigma's range, where bisection on sigma loses precision.
    interior = {
        "tanh": z.abs() < 0.999,
        "sigmoid": (z > 1e-3) & (z < 0.999),
        "softplus": z > 1e-3,
        "leaky_relu": torch.ones_like(z, dtype=torch.bool),
    }[name]
    lhs = (1 - alpha) * z + alpha * inverse_by_bisection(act, z)
    assert torch.allclose(lhs[interior], X[interior], atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_prox_with_unit_step_is_the_activation(name):
    act = get_activation(name)
    assert torch.allclose(act.prox(X, 1.0), act(X), atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("alpha", [0.3, 2.0])
def test_prox_is_firmly_nonexpansive_and_monotone(name, alpha):
    """Scalar prox operators are nondecreasing and 1-Lipschitz."""
    z = get_activation(name).prox(X, alpha)
    dz = torch.diff(z)
    assert (dz >= -1e-12).all()
    assert (dz <= torch.diff(X) + 1e-12).all()


def test_prox_differs_from_activation_when_alpha_is_not_one():
    act = get_activation("tanh")
    assert (act.prox(X, 2.0) - act(X)).abs().max() > 0.05


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_autograd(name):
    act = get_activation(name)
    x = (X + 0.0123).clone().requires_grad_(True)  # avoid kinks exactly at 0 and +-1
    (grad,) = torch.autograd.grad(act(x).sum(), x)
    assert torch.allclose(act.derivative(x.detach()), grad, atol=1e-12)
    assert (grad >= 0).all() and (grad <= 1).all()


def test_leaky_relu_closed_form():
    act = LeakyReLU(0.25)
    x = torch.tensor([-2.0, 3.0], dtype=torch.float64)
    # f(z) = (1/a - 1) z^2 / 2 for z < 0: prox_{2f}(-2) = -2 / (1 + 2 * 3)
    assert torch.allclose(act.prox(x, 2.0), torch.tensor([-2.0 / 7.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="negative_slope"):
        LeakyReLU(0.0)


def test_custom_activation_by_subclassing():
    class Cubic(ProximalActivation):
        """sigma^{-1}(z) = z + z^3 (f(z) = z^4 / 4): sigma is a prox."""

        def forward(self, x):
            # real root of z^3 + z - x by Newton (monotone, converges from 0)
            z = torch.zeros_like(x)
            for _ in range(60):
                z = z - (z**3 + z - x) / (3 * z**2 + 1)
            return z

        def derivative(self, x):
            return 1 / (3 * self.forward(x) ** 2 + 1)

    act = Cubic()
    z = act.prox(X, 0.5)
    assert torch.allclose(0.5 * z + 0.5 * (z + z**3), X, atol=1e-9)


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softplus"])
@pytest.mark.parametrize("alpha", [0.05, 0.5, 2.0, 20.0])
def test_prox_converges_in_few_newton_steps_even_at_the_ends_of_the_range(name, alpha):
    """Near sigma's range ends (z ~ 1e-30 for sigmoid at x = -70) Newton on the pre-activation
    stays quadratic: a handful of steps, and the optimality condition holds in u = sigma^{-1}(z)."""
    act = get_activation(name)
    calls = []
    derivative = act.derivative
    act.derivative = lambda u: calls.append(1) or derivative(u)
    x = torch.cat([torch.linspace(-70, 70, 301, dtype=torch.float64), torch.tensor([-1e3, 1e3], dtype=torch.float64)])
    u = act._prox_preactivation(x, alpha)
    assert len(calls) <= 12
    assert torch.allclose(alpha * u + (1 - alpha) * act(u), x, rtol=1e-12, atol=1e-12)
    assert torch.equal(act.prox(x, alpha), act(u))


def test_prox_derivative_matches_finite_differences():
    act = get_activation("tanh")
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    h = 1e-6
    numeric = (act.prox(x + h, 0.3) - act.prox(x - h, 0.3)) / (2 * h)
    assert torch.allclose(act.prox_derivative(x, 0.3), numeric, atol=1e-8)


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        get_activation("swish")
