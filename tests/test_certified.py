"""Certified robustness trained for: soundness of every certificate (dense float64, small sizes),
the norm bounds behind it, certified training, and clear refusals."""

import itertools

import pytest
import torch
from torch import nn

from helpers import SIDE, dense, small_classifier
from mondeq.data import DatasetInfo, ImageDataset
from mondeq.errors import ConfigError
from mondeq.layer import MonDEQ
from mondeq.models import ConvNormBound, MonDEQClassifier, NormBound, preset_config, strided_conv_norm
from mondeq.operators import IntervalFullyConnected
from mondeq.operators.convolutional import circular_conv
from mondeq.robust import (
    Box,
    CertifiedObjective,
    certify_checkpoint,
    equilibrium_box,
    evaluate_robustness,
    interval_logits,
    network_box,
    parse_certified,
    worst_case_logits,
)
from mondeq.train import TrainConfig, Trainer


def model(kind: str = "fc", seed: int = 0, **options) -> MonDEQClassifier:
    classifier = small_classifier(kind, seed, **options)
    with torch.no_grad():  # weights far from their initial scale: a bound must hold for every value
        for name, p in classifier.named_parameters():
            p.copy_((3.0 if "original" in name else 0.7) * torch.randn_like(p))
    return classifier


# -- exact norms -----------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_strided_conv_norm_is_the_dense_matrix_norm(stride, kernel_size):
    kernel = torch.randn(3, 2, kernel_size, kernel_size, dtype=torch.float64, generator=torch.Generator().manual_seed(stride))
    matrix = dense(lambda x: circular_conv(x, kernel, stride=stride), (2, SIDE, SIDE))
    expected = torch.linalg.matrix_norm(matrix, ord=2)
    assert strided_conv_norm(kernel, (SIDE, SIDE), stride).item() == pytest.approx(expected.item(), rel=1e-10)


def test_norm_bounds_hold_for_any_weight():
    generator = torch.Generator().manual_seed(0)
    weight = 10 * torch.randn(7, 5, dtype=torch.float64, generator=generator)
    assert torch.linalg.matrix_norm(NormBound(0.3)(weight), ord=2).item() == pytest.approx(0.3)
    small = 0.2 * weight / torch.linalg.matrix_norm(weight, ord=2)
    assert torch.equal(NormBound(0.3)(small), small)  # inside the bound: untouched
    kernel = 10 * torch.randn(4, 1, 3, 3, dtype=torch.float64, generator=generator)
    bounded = ConvNormBound(0.5, (SIDE, SIDE), 2)(kernel)
    assert strided_conv_norm(bounded, (SIDE, SIDE), 2).item() == pytest.approx(0.5)


# -- Lipschitz-bounded monDEQs ---------------------------------------------------------------
def largest_ratios(classifier, generator, samples=64, ascent_steps=50):
    """The largest ``||f(x) - f(y)|| / ||x - y||`` found by random pairs and by gradient ascent."""
    shape = (1, SIDE, SIDE)
    x = 2 * torch.randn(samples, *shape, generator=generator, dtype=torch.float64)
    y = x + torch.randn(samples, *shape, generator=generator, dtype=torch.float64) * torch.rand(
        samples, 1, 1, 1, generator=generator, dtype=torch.float64
    )
    with torch.no_grad():
        best = ((classifier(x) - classifier(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)).max().item()
    x, delta = x[:8].clone().requires_grad_(True), (y[:8] - x[:8]).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x, delta], lr=0.05)
    for _ in range(ascent_steps):
        ratio = (classifier(x + delta) - classifier(x)).norm(dim=1) / delta.flatten(1).norm(dim=1)
        best = max(best, ratio.max().item())
        optimizer.zero_grad()
        (-ratio.sum()).backward()
        optimizer.step()
    return best


@pytest.mark.parametrize(("kind", "gamma", "m"), [("fc", 0.7, 1.0), ("fc", 3.0, 0.2), ("single-conv", 1.5, 0.5)])
def test_a_lipschitz_model_is_never_steeper_than_gamma(kind, gamma, m):
    for seed in range(2):
        classifier = model(kind, seed=seed, lipschitz=gamma, m=m, **({"stride": 2} if kind == "single-conv" else {}))
        classifier.layer.configure(tol=1e-10)  # the bound is the exact equilibrium's: solve closely, allow 1e-6
        best = largest_ratios(classifier, torch.Generator().manual_seed(seed))
        assert best <= gamma * (1 + 1e-6), f"{kind}: ratio {best} above gamma {gamma}"
        assert best >= gamma / 20, "the attack found nothing: the check would pass vacuously"


def test_the_lipschitz_option_is_refused_where_no_exact_bound_exists():
    with pytest.raises(ConfigError, match="lipschitz .* applies to fc and single-conv, not multi-conv"):
        preset_config("multi-conv", "mnist", 1, 28, 10, lipschitz=1.0)
    with pytest.raises(ConfigError, match="must be a positive"):
        preset_config("fc", "mnist", 1, 28, 10, lipschitz=0.0)
    with pytest.raises(ConfigError, match="must be a positive"):
        preset_config("fc", "mnist", 1, 28, 10, lipschitz=-1.0)
    with pytest.raises(ConfigError, match="give one of them"):
        preset_config("fc", "mnist", 1, 28, 10, lipschitz=1.0, input_norm=2.0)


# -- interval bounds -------------------------------------------------------------------------
def test_the_interval_operator_is_monotone_and_its_magnitude_contracts():
    for seed in range(5):
        torch.manual_seed(seed)
        op = IntervalFullyConnected(6, 9, m=0.3).double()
        with torch.no_grad():
            op.M.mul_(5)
        W = op.weights()
        symmetric = torch.eye(9, dtype=torch.float64) - (W + W.T) / 2
        assert torch.linalg.eigvalsh(symmetric).min().item() >= 0.3 - 1e-12
        assert torch.linalg.eigvals(W.abs()).abs().max().item() <= 0.7 + 1e-12


def sampled_ball(center, eps, samples, generator):
    """``samples`` points of the l-infinity ball: random interior points, random corners, the centre."""
    n = center.numel()
    interior = center + eps * (2 * torch.rand(samples, n, generator=generator, dtype=torch.float64) - 1)
    corners = center + eps * (2 * torch.randint(0, 2, (samples, n), generator=generator).double() - 1)
    return torch.cat([interior, corners, center.reshape(1, -1)])


def test_interval_bounds_contain_every_sampled_equilibrium_and_logit():
    classifier = model("fc", seed=1, interval=True, m=0.4)
    generator = torch.Generator().manual_seed(1)
    eps = 0.05
    for _ in range(3):
        x = torch.randn(1, 1, SIDE, SIDE, generator=generator, dtype=torch.float64)
        points = sampled_ball(x.flatten(), eps, 1000, generator).reshape(-1, 1, SIDE, SIDE)
        box, iterations = equilibrium_box(classifier.layer, Box.around(x, torch.full_like(x, eps)), iterations=200, tol=1e-13)
        with torch.no_grad():
            z = classifier.layer(points)
            logits = classifier(points)
        assert (z >= box.lower - 1e-9).all() and (z <= box.upper + 1e-9).all()
        assert iterations < 200  # converged: tight, not only sound
        labels = torch.zeros(1, dtype=torch.long)
        worst = interval_logits(classifier, Box.around(x, torch.full_like(x, eps)), labels)
        margins = logits[:, :1] - logits  # logit of class 0 minus each logit, at every sample
        assert (margins >= -worst - 1e-9).all()


def test_interval_bounds_are_sound_after_any_number_of_iterations():
    classifier = model("fc", seed=2, interval=True, m=0.2)
    x = torch.randn(1, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    points = sampled_ball(x.flatten(), 0.1, 300, torch.Generator().manual_seed(3)).reshape(-1, 1, SIDE, SIDE)
    with torch.no_grad():
        z = classifier.layer(points)
    widths = []
    for iterations in (1, 3, 10, 100):
        box, _ = equilibrium_box(classifier.layer, Box.around(x, torch.full_like(x, 0.1)), iterations=iterations, tol=0)
        assert (z >= box.lower - 1e-9).all() and (z <= box.upper + 1e-9).all()
        widths.append((box.upper - box.lower).sum().item())
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0]


def test_explicit_network_bounds_contain_sampled_outputs():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 3, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5)).double()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, SIDE, SIDE, generator=generator, dtype=torch.float64)
    points = sampled_ball(x.flatten(), 0.2, 1000, generator).reshape(-1, 1, SIDE, SIDE)
    box = network_box(network, Box.around(x, torch.full_like(x, 0.2)))
    with torch.no_grad():
        out = network(points)
    assert (out >= box.lower - 1e-9).all() and (out <= box.upper + 1e-9).all()
    labels = torch.full((1,), 2)
    worst = worst_case_logits(network_box(network[:-1], Box.around(x, torch.full_like(x, 0.2))), network[-1], labels)
    assert (out[:, 2:3] - out >= -worst - 1e-9).all()


def test_interval_bounds_refuse_other_operators():
    with pytest.raises(ConfigError, match="interval operator"):
        equilibrium_box(model("fc").layer, Box.around(torch.zeros(1, 1, SIDE, SIDE), torch.full((1, 1, SIDE, SIDE), 0.1)))
    with pytest.raises(ConfigError, match="interval .* applies to fc and single-conv, not multi-conv"):
        preset_config("multi-conv", "mnist", 1, 28, 10, interval=True, m=0.5)
    with pytest.raises(ConfigError, match="m < 1"):
        preset_config("fc", "mnist", 1, 28, 10, interval=True, m=1.0)


# -- certified training and evaluation -------------------------------------------------------
@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(128) % 4
    x = 0.2 * torch.rand(128, 1, 28, 28, generator=generator)
    for k in range(4):  # a bright bar per class
        x[labels == k, :, 4 + 5 * k : 7 + 5 * k, :] += 0.7
    info = DatasetInfo("synthetic", 1, 28, [str(k) for k in range(4)], (0.3,), (0.3,), False)
    return ImageDataset((x.clamp(0, 1) * 255).to(torch.uint8), labels, info)


@pytest.mark.parametrize(
    ("norm", "options"),
    [
        ("l2", {"model_options": {"lipschitz": 2.0, "width": 16}}),
        ("linf", {"model_options": {"interval": True, "m": 0.5, "width": 16}}),
        (
            "linf",
            {
                "model": "single-conv",
                "epochs": 12,
                "batch_size": 32,
                "model_options": {"interval": True, "m": 0.5, "channels": [4], "stride": 2, "pool": 2},
            },
        ),
    ],
)
def test_certified_training_runs_and_certificates_never_exceed_pgd(tmp_path, images, norm, options):
    eps = {"l2": [0.3, 1.0, 2.0], "linf": [0.02, 0.05, 0.1]}[norm]
    config = TrainConfig(
        **{"model": "fc", "epochs": 4, **options},
        dataset="mnist",
        lr=5e-3,
        certified=f"{norm}:{eps[1]}",
        certified_warmup=1,
        certified_ramp=2,
        out=str(tmp_path / "run"),
    )
    trainer = Trainer(config, images, images, progress=False)
    history = trainer.fit()
    assert history[-1]["train_accuracy"] > 0.5
    classifier = trainer.model
    classifier.layer.configure(tol=1e-6)
    report = evaluate_robustness(classifier, images, eps, classifier.config.lipschitz, pgd_steps=20, norm=norm)
    assert report["certified_accuracy"][0] > 0  # something is certified: the comparison is not vacuous
    for certified, pgd in zip(report["certified_accuracy"], report["pgd_accuracy"]):
        assert certified <= pgd <= report["clean_accuracy"]
    assert report["certified_accuracy"] == sorted(report["certified_accuracy"], reverse=True)


def test_certified_options_are_checked():
    for text in ("l1:0.1", "linf:-0.1", "linf:0", "l2:x", "linf", "l2:inf"):
        with pytest.raises(ConfigError, match="NORM:EPS"):
            parse_certified(text)
    with pytest.raises(ConfigError, match=r"needs a model built for it \(--lipschitz GAMMA\)"):
        TrainConfig(model="fc", dataset="mnist", certified="l2:0.1")
    with pytest.raises(ConfigError, match="--interval"):
        TrainConfig(model="fc", dataset="mnist", certified="linf:0.1", model_options={"lipschitz": 1.0})
    with pytest.raises(ConfigError, match="does nothing with certified unset"):
        TrainConfig(model="fc", dataset="mnist", certified_ramp=2)


def test_the_certified_schedule_warms_up_then_ramps():
    objective = CertifiedObjective("linf", 0.1, warmup=1, ramp=2, kappa=0.5)
    assert objective.at(0.5) == (0.0, 1.0)
    assert objective.at(2.0) == pytest.approx((0.05, 0.75))
    assert objective.at(9.0) == pytest.approx((0.1, 0.5))


def test_certify_refuses_a_checkpoint_without_the_interval_operator(tmp_path, images):
    config = TrainConfig(model="fc", dataset="mnist", epochs=1, out=str(tmp_path / "run"), model_options={"width": 8})
    Trainer(config, images, images, progress=False).fit()
    with pytest.raises(ConfigError, match="trained without it"):
        certify_checkpoint(tmp_path / "run", [0.1], norm="linf")


def test_every_corner_of_a_tiny_ball_is_inside_the_bounds():
    """All 2^n corners of a ball in n = 8 input dimensions, not only sampled ones."""
    torch.manual_seed(4)
    op = IntervalFullyConnected(8, 6, m=0.3).double()
    with torch.no_grad():
        for p in op.parameters():
            p.mul_(4)
    layer = MonDEQ(op, tol=1e-12, max_iter=5000).double()
    x = torch.randn(1, 8, dtype=torch.float64)
    corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=8)), dtype=torch.float64)
    with torch.no_grad():
        z = layer(x + 0.3 * corners)
    box, _ = equilibrium_box(layer, Box.around(x, torch.full_like(x, 0.3)), iterations=300)
    assert (z >= box.lower - 1e-9).all() and (z <= box.upper + 1e-9).all()


# -- interval iterations that start where the last visit ended -------------------------------
def test_a_warm_started_interval_iteration_reaches_the_cold_fixed_point():
    """The interval map contracts from any start: a box far from the fixed point (not containing it) ends there too."""
    classifier = model("fc", seed=5, interval=True, m=0.4)
    x = torch.randn(2, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ball = Box.around(x, torch.full_like(x, 0.05))
    cold, _ = equilibrium_box(classifier.layer, ball, iterations=400, tol=0)
    start = Box(cold.lower + 3.0, cold.upper + 5.0)  # above the fixed point: no sound iteration starts there
    warm, _ = equilibrium_box(classifier.layer, ball, iterations=400, tol=0, start=start)
    torch.testing.assert_close(warm.lower, cold.lower, rtol=0, atol=1e-10)
    torch.testing.assert_close(warm.upper, cold.upper, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="certificate"):
        equilibrium_box(classifier.layer, ball, rounding=True, start=start)


def test_certified_training_keeps_boxes_and_certificates_ignore_them(tmp_path, images):
    config = TrainConfig(
        model="fc",
        dataset="mnist",
        epochs=3,
        lr=5e-3,
        certified="linf:0.05",
        certified_warmup=0.5,
        certified_ramp=1,
        out=str(tmp_path / "run"),
        model_options={"interval": True, "m": 0.5, "width": 16},
    )
    trainer = Trainer(config, images, images, progress=False)
    store = trainer.fixed_points
    assert store is not None and store.directions == ("interval_lower", "interval_upper")
    trainer.fit()
    assert store.visited["interval_lower"].all() and store.visited["interval_upper"].all()
    classifier = trainer.model
    classifier.layer.configure(tol=1e-6)
    with store.select(torch.arange(len(images))):  # a selection active: the certificate must not read it
        with_store = evaluate_robustness(classifier, images, [0.02, 0.05], None, pgd_steps=5, norm="linf")
    classifier.layer.fixed_points = None
    without = evaluate_robustness(classifier, images, [0.02, 0.05], None, pgd_steps=5, norm="linf")
    assert with_store["certified_accuracy"] == without["certified_accuracy"]
    off = TrainConfig(**{**config.__dict__, "certified_reuse": False, "out": str(tmp_path / "off")})
    assert Trainer(off, images, images, progress=False).fixed_points is None
