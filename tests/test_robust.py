"""Lipschitz bounds are never violated, are close to what attacks find, and certificates hold under PGD."""

import pytest
import torch

from mondeq.models import ModelConfig, MonDEQClassifier
from mondeq.robust import certify, lipschitz_bound, logit_margin, pgd_attack, spectral_norm


def small_model(kind: str, m: float = 0.5, seed: int = 0) -> MonDEQClassifier:
    torch.manual_seed(seed)
    config = ModelConfig(
        kind=kind,
        in_channels=1,
        image_size=8,
        num_classes=4,
        width=10,
        channels=[3],
        pool=4,
        m=m,
        tol=1e-11,
        max_iter=3000,
        alpha=0.5,
    )
    model = MonDEQClassifier(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return model.eval()


def dense(linear, n_in):
    eye = torch.eye(n_in, dtype=torch.float64)
    return torch.stack([linear(e) for e in eye], dim=1)


@pytest.mark.parametrize("kind", ["fc", "single-conv"])
def test_norms_match_dense_svd(kind):
    model = small_model(kind)
    bound = lipschitz_bound(model, slack=0.0)
    op = model.layer.linear
    zero = op.inject(torch.zeros(1, 1, 8, 8, dtype=torch.float64))[0]
    U = dense(lambda e: (op.inject(e.reshape(1, 1, 8, 8))[0] - zero).detach(), 64)
    assert bound.input_norm == pytest.approx(torch.linalg.matrix_norm(U, ord=2).item(), rel=1e-4)


def logits_of(model, x):
    return model(x)


@pytest.mark.parametrize("kind", ["fc", "single-conv"])
def test_bound_is_never_violated_and_reasonably_tight(kind):
    model = small_model(kind)
    L = lipschitz_bound(model).logits
    generator = torch.Generator().manual_seed(1)
    # random search
    x = torch.randn(64, 1, 8, 8, generator=generator, dtype=torch.float64)
    delta = torch.randn(64, 1, 8, 8, generator=generator, dtype=torch.float64) * 0.1
    with torch.no_grad():
        ratios = (model(x + delta) - model(x)).norm(dim=1) / delta.flatten(1).norm(dim=1)
    assert ratios.max().item() <= L
    # gradient ascent on the ratio
    x = torch.randn(8, 1, 8, 8, generator=generator, dtype=torch.float64).requires_grad_(True)
    delta = (0.1 * torch.randn(8, 1, 8, 8, generator=generator, dtype=torch.float64)).requires_grad_(True)
    optimizer = torch.optim.Adam([x, delta], lr=0.02)
    best = 0.0
    for _ in range(150):
        ratio = (model(x + delta) - model(x)).norm(dim=1) / delta.flatten(1).norm(dim=1)
        best = max(best, ratio.max().item())
        optimizer.zero_grad()
        (-ratio.sum()).backward()
        optimizer.step()
    assert best <= L
    assert 10 * best >= L, f"bound {L:.3g} more than 10x the largest ratio found {best:.3g}"


def test_equilibrium_bound_holds():
    model = small_model("single-conv", m=1.0)
    bound = lipschitz_bound(model)
    op = model.layer.linear
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(16, 1, 8, 8, generator=generator, dtype=torch.float64)
    delta = 0.05 * torch.randn(16, 1, 8, 8, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        dz = op.flatten(model.layer(x + delta)) - op.flatten(model.layer(x))
    assert (dz.norm(dim=1) / delta.flatten(1).norm(dim=1)).max().item() <= bound.equilibrium


@pytest.mark.parametrize("kind", ["fc", "single-conv"])
def test_certified_examples_survive_pgd_at_their_radius(kind):
    model = small_model(kind, m=2.0)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 1, 8, 8, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        labels = model(x).argmax(1)  # the model's own predictions: all "correct", margins vary
    L = lipschitz_bound(model).logits
    radius = certify(model, x, labels, L)
    assert (radius > 0).all()
    adversarial = pgd_attack(model, x, labels, eps=radius, steps=30)
    assert ((adversarial - x).flatten(1).norm(dim=1) <= radius * (1 + 1e-9)).all()
    with torch.no_grad():
        assert (model(adversarial).argmax(1) == labels).all()
        # and the margin dropped by no more than the bound allows
        drop = logit_margin(model(x), labels) - logit_margin(model(adversarial), labels)
    assert (drop <= 2 * L * radius + 1e-9).all()
    # the attack is real: at 20x the certified radius it flips some predictions
    strong = pgd_attack(model, x, labels, eps=20 * radius, steps=30)
    with torch.no_grad():
        assert (model(strong).argmax(1) != labels).any()


def test_spectral_norm_of_a_matrix():
    A = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert spectral_norm(lambda v: v @ A.T, (1, 5)) == pytest.approx(torch.linalg.matrix_norm(A, ord=2).item(), rel=1e-6)


def test_weight_perturbation_bound_holds():
    from mondeq.robust import weight_perturbation_bound

    model = small_model("fc", m=1.0)
    op = model.layer.linear
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        z = op.flatten(model.layer(x))
        W = op.to_dense()
        U, b = op.U.weight.clone(), op.U.bias.clone()
        for p in (op.A, op.B, op.U.weight, op.U.bias):
            p.add_(0.05 * torch.randn_like(p))
        z_new = op.flatten(model.layer(x))
        dW = torch.linalg.matrix_norm(op.to_dense() - W, ord=2).item()
        dU = torch.linalg.matrix_norm(op.U.weight - U, ord=2).item()
        db = (op.U.bias - b).norm().item()
    # The argument is symmetric in the two weight sets; the model now holds the perturbed ones.
    bound_at_new = weight_perturbation_bound(model, x, dW, dU, db)
    actual = (z_new - z).norm(dim=1)
    assert (actual <= bound_at_new + 1e-9).all()
    assert (actual > 0).all()
