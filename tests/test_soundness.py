"""Certificates are proofs: each bound checked against an exact float64 computation (dense matrices,
solves to 1e-12, a linear map where the bound is attained), at margins m != 1, for solves stopped
early on purpose, and each test named in tests/MUTATIONS.md fails when its one-line change is made.
The convolutional interval operator's two conditions in dense float64."""

import math
import os

import pytest
import torch

from helpers import SIDE, dense, small_classifier
from mondeq import files
from mondeq.errors import ignore_convergence_warnings
from mondeq.layer import MonDEQ
from mondeq.models import KINDS, ModelConfig, MonDEQClassifier, linear_norm
from mondeq.operators import FullyConnected, IntervalSingleConv, MultiConv, SingleConv
from mondeq.robust import Box, certified_radius, equilibrium_box, interval_logits, lipschitz_bound, pgd_linf_attack
from mondeq.robust.certificates import certified_margins, equilibrium_error, logit_margin
from mondeq.robust.interval import rounding_bound
from mondeq.solvers import get_solver
from mondeq.solvers.base import SplittingProblem, Status, solve

F64 = torch.float64


def classifier(kind: str, seed: int = 0, scale: float = 1.0, **options) -> MonDEQClassifier:
    model = small_classifier(kind, seed, width=10, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


# -- the convolutional interval operator ----------------------------------------------------
@pytest.mark.parametrize(("stride", "kernel_size", "m"), [(1, 3, 0.3), (2, 3, 0.5), (1, 5, 0.7)])
def test_the_conv_interval_operator_is_monotone_and_its_magnitude_contracts(stride, kernel_size, m):
    for seed in range(3):
        torch.manual_seed(seed)
        op = IntervalSingleConv(2, 3, 10 if stride == 2 else 6, kernel_size=kernel_size, m=m, stride=stride).double()
        with torch.no_grad():
            op.M.mul_(5 * torch.randn_like(op.M))  # far from the initial scale, signs mixed
        W = op.to_dense()
        n = W.shape[0]
        assert torch.linalg.eigvalsh(torch.eye(n, dtype=F64) - (W + W.T) / 2).min().item() >= m - 1e-12
        assert torch.linalg.eigvals(W.abs()).abs().max().item() <= 1 - m + 1e-12
        # the interval maps are the convolutions by the kernel and its absolute value: W and |W|
        center, radius = op.interval_multiply(torch.eye(n, dtype=F64), torch.eye(n, dtype=F64), op.interval_weights())
        assert torch.allclose(center.T, W, atol=1e-14) and torch.allclose(radius.T, W.abs(), atol=1e-14)
        # the resolvent (Fourier domain) and its transpose are the dense inverses
        y = torch.randn(3, n, dtype=F64)
        system = 1.6 * torch.eye(n, dtype=F64) - 0.6 * W
        resolvent = op.resolvent(0.6)
        assert torch.allclose(resolvent.solve(y), torch.linalg.solve(system, y.T).T, atol=1e-12)
        assert torch.allclose(resolvent.T.solve(y), torch.linalg.solve(system.T, y.T).T, atol=1e-12)
        # the contraction vector: |W| v <= kappa v with kappa < 1, for the start box
        v, kappa = op.contraction(op.interval_weights()[1])
        assert kappa < 1 and (W.abs() @ v[0] <= kappa * v[0] * (1 + 1e-12)).all()


def test_the_conv_interval_operator_refuses_bad_arguments():
    with pytest.raises(ValueError, match="0 < m < 1"):
        IntervalSingleConv(1, 4, 8, m=1.0)
    with pytest.raises(ValueError, match="odd"):
        IntervalSingleConv(1, 4, 8, kernel_size=4)
    with pytest.raises(ValueError, match="multiple of the stride"):
        IntervalSingleConv(1, 4, 9, stride=2)
    with pytest.raises(ValueError, match="expects input of shape"):
        IntervalSingleConv(1, 4, 8).check_input(torch.zeros(2, 1, 9, 9))


@pytest.mark.parametrize("kind", ["fc", "single-conv"])
def test_interval_bounds_contain_the_float64_equilibria_of_2000_points_of_the_ball(kind):
    model = classifier(kind, seed=3, scale=2.0, interval=True, m=0.4, stride=2 if kind == "single-conv" else 1)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, SIDE, SIDE, generator=generator, dtype=F64)
    eps = 0.1
    n = x.numel()
    interior = x.flatten() + eps * (2 * torch.rand(1000, n, generator=generator, dtype=F64) - 1)
    corners = x.flatten() + eps * (2 * torch.randint(0, 2, (1000, n), generator=generator).double() - 1)
    points = torch.cat([interior, corners]).reshape(-1, 1, SIDE, SIDE)
    ball = Box.around(x, torch.full_like(x, eps))
    with torch.no_grad():
        z = model.layer.linear.flatten(model.layer(points))
        logits = model(points)
    for rounding in (False, True):
        box, iterations = equilibrium_box(model.layer, ball, iterations=300, tol=1e-13, rounding=rounding)
        assert (z >= box.lower - 1e-10).all() and (z <= box.upper + 1e-10).all()
        assert iterations < 300  # converged: tight, not only sound
        worst = interval_logits(model, ball, torch.zeros(1, dtype=torch.long), rounding=rounding)
        assert (logits[:, :1] - logits >= -worst - 1e-10).all()
    # rounding only widens, and by no more than float64's resolution times the sizes involved
    plain, _ = equilibrium_box(model.layer, ball, iterations=300, tol=1e-13)
    widened, _ = equilibrium_box(model.layer, ball, iterations=300, tol=1e-13, rounding=True)
    assert (widened.lower <= plain.lower).all() and (widened.upper >= plain.upper).all()
    assert (widened.upper - plain.upper).max().item() < 1e-9


def test_the_start_box_and_truncated_gradients_keep_the_bounds_sound():
    model = classifier("single-conv", seed=5, scale=2.0, interval=True, m=0.05, stride=2)
    x = torch.randn(4, 1, SIDE, SIDE, dtype=F64, generator=torch.Generator().manual_seed(5))
    ball = Box.around(x, torch.full_like(x, 0.2))
    with torch.no_grad():
        exact, _ = equilibrium_box(model.layer, ball, iterations=2000, tol=1e-14)
    for iterations in (0, 1, 2, 5):  # 0: the start box itself
        box, done = equilibrium_box(model.layer, ball, iterations=iterations, tol=0, taped=1)
        assert done == iterations
        assert (box.lower <= exact.lower + 1e-12).all() and (box.upper >= exact.upper - 1e-12).all()
    # where the start box is attained: M the identity kernel makes W = (1 - m) I, so z* = relu(Ux + b) / m
    tight = classifier("single-conv", seed=6, interval=True, m=0.25, stride=2)
    with torch.no_grad():
        tight.layer.linear.M.zero_()
        tight.layer.linear.M[:, :, 1, 1] = torch.eye(3, dtype=F64)
        z = tight.layer.linear.flatten(tight.layer(x))
    start, _ = equilibrium_box(tight.layer, Box.around(x, torch.zeros_like(x)), iterations=0)
    assert (z <= start.upper * (1 + 1e-12)).all() and (z.amax(dim=1) >= 0.999 * start.upper.amax(dim=1)).all()
    box, _ = equilibrium_box(model.layer, ball, iterations=8, tol=0, taped=3)
    box.upper.sum().backward()  # gradients flow through the taped iterations
    assert model.layer.linear.M.grad is not None and model.layer.linear.M.grad.abs().sum() > 0


def test_rounding_bound_is_the_standard_dot_product_bound():
    u = 2.0**-53
    assert rounding_bound(10, F64) == pytest.approx(12 * u / (1 - 12 * u), rel=1e-15)
    assert rounding_bound(10, torch.float32) == pytest.approx(12 * 2.0**-24 / (1 - 12 * 2.0**-24), rel=1e-12)


# -- the solve's remaining error -------------------------------------------------------------
OPERATORS = {
    "fc": lambda: FullyConnected(6, 9, m=0.3),
    "single-conv": lambda: SingleConv(1, 2, SIDE, m=0.4),
    "multi-conv": lambda: MultiConv(1, (2, 3), SIDE, m=0.6),
    "interval single-conv": lambda: IntervalSingleConv(1, 3, SIDE, m=0.3, stride=2),
}


@pytest.mark.parametrize("name", list(OPERATORS))
def test_the_equilibrium_error_bound_holds_for_solves_stopped_early(name):
    torch.manual_seed(1)
    op = OPERATORS[name]().double()
    with torch.no_grad():
        for p in op.parameters():
            p.mul_(2)
    shape = (6,) if name == "fc" else (1, SIDE, SIDE)
    x = torch.randn(16, *shape, dtype=F64)
    exact_layer = MonDEQ(op, tol=1e-13, max_iter=5000)
    with torch.no_grad(), ignore_convergence_warnings():
        exact = op.flatten(exact_layer(x))
        ratios = []
        for max_iter in (1, 2, 4):
            loose = MonDEQ(op, tol=0.9, max_iter=max_iter)
            z = loose(x)
            bound = equilibrium_error(loose, x, z)
            distance = (op.flatten(z) - exact).norm(dim=1)
            assert (distance <= bound).all(), f"{name}: distance {distance.max():.3g} above its bound"
            ratios.append((bound / distance.clamp_min(1e-300)).median().item())
    assert min(ratios) < 1e3, "the bound is so loose that the check says little"


def test_no_point_is_certified_that_an_exact_solve_proves_uncertifiable():
    model = classifier("fc", seed=2, scale=1.5, lipschitz=1.0, m=0.3)
    x = torch.randn(64, 1, SIDE, SIDE, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        labels = model(x).argmax(1)
        exact = logit_margin(model(x), labels)  # solved to 1e-12
    model.layer.configure(tol=0.9, max_iter=1)  # stopped early on purpose
    with torch.no_grad(), ignore_convergence_warnings():
        raw = logit_margin(model(x), labels)
        margins = certified_margins(model, x, labels)
    assert (margins <= exact).all()
    assert (raw > exact + 1e-6).any(), "the early stop moved no margin up: the check would pass vacuously"
    for radius in (0.01, 0.05, 0.2):  # certified by the computed margin => certified by the exact one
        threshold = math.sqrt(2) * radius
        assert not ((margins > threshold) & (exact <= threshold)).any()


# -- the Lipschitz bounds, exact ----------------------------------------------------------------
def test_the_pooling_norms_are_the_dense_matrix_norms():
    for pool in (1, 2, 4):
        config = ModelConfig(kind="single-conv", in_channels=1, image_size=SIDE, num_classes=4, channels=[2], pool=pool)
        matrix = dense(lambda z, c=config: KINDS["single-conv"].pool(c, z).flatten(1), (2, SIDE, SIDE))
        assert KINDS["single-conv"].pool_norm(config) == pytest.approx(torch.linalg.matrix_norm(matrix, ord=2).item(), rel=1e-12)


@pytest.mark.parametrize(("kind", "gamma", "m"), [("fc", 1.5, 0.3), ("single-conv", 1.5, 0.7), ("single-conv", 0.8, 0.25)])
def test_a_lipschitz_model_s_exact_norm_product_is_gamma(kind, gamma, m):
    """The product ||R P|| ||U|| / m of exact (dense SVD) norms is gamma when the bounds are active."""
    model = classifier(kind, scale=50.0, lipschitz=gamma, m=m)
    op = model.layer.linear
    zero = op.inject(torch.zeros(1, 1, SIDE, SIDE, dtype=F64))
    U = dense(lambda x: op.inject(x) - zero, (1, SIDE, SIDE))
    RP = dense(lambda z: torch.nn.functional.linear(model.pool(z), model.readout.weight), (op.features,))
    product = (linear_norm(RP) * linear_norm(U) / m).item()
    assert product == pytest.approx(gamma, rel=1e-5)


@pytest.mark.parametrize("m", [0.25, 2.0])
def test_the_estimated_lipschitz_bounds_scale_as_one_over_m(m):
    """W = (1 - m) I and a bias that keeps ReLU in its linear part: z* = (Ux + b) / m exactly, so the
    equilibrium's Lipschitz constant is ||U|| / m and the logits' ||R U|| / m, both attained."""
    model = classifier("fc", m=m)
    op = model.layer.linear
    with torch.no_grad():
        op.A.zero_()
        op.B.zero_()
        op.U.bias.fill_(1e3)
    bound = lipschitz_bound(model, slack=0.0)
    U = op.U.weight.detach()
    assert bound.equilibrium == pytest.approx(linear_norm(U).item() / m, rel=1e-4)
    # attained: along U's top right singular vector, within the linear region
    _, _, vh = torch.linalg.svd(U)
    x = torch.zeros(1, 1, SIDE, SIDE, dtype=F64)
    step = vh[0].reshape(1, 1, SIDE, SIDE)
    with torch.no_grad():
        ratio = (op.flatten(model.layer(x + step)) - op.flatten(model.layer(x))).norm() / step.norm()
    assert ratio.item() == pytest.approx(bound.equilibrium, rel=1e-4)
    assert bound.logits >= linear_norm(model.readout.weight.detach() @ U).item() / m * (1 - 1e-6)
    assert bound.logits <= bound.readout_norm * bound.input_norm / m * (1 + 1e-9)


def test_the_certified_radius_is_exact_on_a_linear_map():
    """Two logits w.x and -w.x: L = ||W|| = sqrt(2) ||w|| and the margin 2 w.x falls to 0 exactly at
    distance margin / ||w_y - w_j|| = margin / (sqrt(2) L): the certified radius, no more, no less."""
    w = torch.tensor([3.0, -1.0, 2.0], dtype=F64)
    weight = torch.stack([w, -w])
    lipschitz = torch.linalg.matrix_norm(weight, ord=2).item()
    x = torch.tensor([[0.4, 0.1, 0.3]], dtype=F64)
    labels = torch.zeros(1, dtype=torch.long)
    radius = certified_radius(x @ weight.T, labels, lipschitz).item()
    direction = -(w / w.norm())  # steepest descent of the margin
    for scale, flipped in ((1 - 1e-9, False), (1 + 1e-9, True)):
        moved = (x + scale * radius * direction) @ weight.T
        assert (logit_margin(moved, labels).item() < 0) == flipped


# -- solvers and files -------------------------------------------------------------------------
def test_forward_backward_clamps_a_step_just_above_its_limit():
    torch.manual_seed(0)
    op = FullyConnected(4, 6, m=0.4).double()
    method = get_solver("fb")
    limit = 2 * op.m / op.lipschitz() ** 2
    assert method.admissible_step(0.99 * limit, op) == 0.99 * limit
    with pytest.warns(Warning, match="exceeds its convergence bound"):
        assert method.admissible_step(1.01 * limit, op) <= limit
    with pytest.raises(ValueError, match="exceeds its convergence bound"):
        method.admissible_step(1.01 * limit, op, strict=True)


def test_a_derived_residual_cannot_fake_convergence():
    """Peaceman-Rachford derives W z + b from the resolvent identity; with a resolvent that is off by
    1e-3 the iteration settles where that derived value agrees with itself, yet z is no equilibrium:
    the explicit residual check must report it."""
    torch.manual_seed(0)
    op = FullyConnected(5, 7, m=0.5).double()
    x = torch.randn(3, 5, dtype=F64)
    resolvent = op.resolvent(1.0)
    problem = SplittingProblem(
        multiply=op.multiply,
        injection=op.inject(x).detach(),
        activation=torch.relu,
        prox=torch.relu,
        alpha=1.0,
        resolvent=lambda y: resolvent.solve(y) * (1 + 1e-3),
    )
    with torch.no_grad():
        result = solve(get_solver("pr"), problem, torch.zeros(3, 7, dtype=F64), tol=1e-8, max_iter=300)
        z = result.z
        true = (z - torch.relu(op.multiply(z) + problem.injection)).norm() / torch.relu(op.multiply(z) + problem.injection).norm()
    assert result.status is not Status.CONVERGED
    assert result.residual == pytest.approx(true.item(), rel=1e-6)


def test_an_atomic_write_syncs_the_file_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append(("fsync", fd)), real_fsync(fd))[1])
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append(("replace", a)), real_replace(a, b))[1])
    files.write_atomic(tmp_path / "out.json", "{}")
    kinds = [kind for kind, _ in events]
    assert "replace" in kinds and "fsync" in kinds[: kinds.index("replace")], f"no fsync before the rename: {kinds}"


# -- certified points against attacks, in float64 -------------------------------------------------
def test_a_certified_point_survives_restarted_pgd_and_the_corners_of_its_ball():
    model = classifier("single-conv", seed=7, interval=True, m=0.6, stride=2)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(32, 1, SIDE, SIDE, dtype=F64, generator=generator)
    with torch.no_grad():
        labels = model(x).argmax(1)
    eps = 0.02
    worst = interval_logits(model, Box.around(x, torch.full_like(x, eps)), labels, iterations=200, rounding=True)
    certified = (worst.scatter(1, labels[:, None], float("-inf")) < 0).all(dim=1)
    assert certified.any() and not certified.all(), "the radius certifies all or nothing: choose another"
    x, labels = x[certified], labels[certified]
    for seed in range(5):  # PGD with random restarts
        attacked = pgd_linf_attack(model, x, labels, eps, steps=30, seed=seed)
        with torch.no_grad():
            assert (model(attacked).argmax(1) == labels).all()
    corners = eps * (2 * torch.randint(0, 2, (256, *x.shape[1:]), generator=generator).double() - 1)
    for point, label in zip(x, labels):
        with torch.no_grad():
            assert (model(point + corners).argmax(1) == label).all()
