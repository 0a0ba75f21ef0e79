r"""Certified accuracy, from a Lipschitz bound (:math:`\ell_2`) or interval bounds (:math:`\ell_\infty`),
beside the accuracy under attack that it must never exceed.

Radii are given on the pixel scale (images in [0, 1]); the models see normalised inputs
:math:`(x - \mu_c) / \sigma_c`, so an :math:`\ell_2` ball of radius :math:`\epsilon` lies in the ball of
radius :math:`\epsilon / \min_c \sigma_c` of the model's input, and an :math:`\ell_\infty` ball is the box of
half-widths :math:`\epsilon / \sigma_c` per channel.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data import Batches, DatasetInfo, ImageDataset
from .attacks import pgd_attack, pgd_linf_attack
from .interval import Box, interval_logits

__all__ = [
    "certified_radius",
    "certify_checkpoint",
    "image_range",
    "input_box",
    "certify",
    "evaluate_robustness",
    "input_radius",
    "logit_margin",
]


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Logit of the true class minus the largest other logit (negative when misclassified)."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def certified_radius(logits: Tensor, labels: Tensor, lipschitz: float) -> Tensor:
    r"""``margin / (sqrt(2) L)`` per example, 0 when misclassified: the difference of two logits of an
    :math:`L`-Lipschitz map is :math:`\sqrt 2 L`-Lipschitz, so no perturbation of a smaller norm flips it."""
    return torch.clamp(logit_margin(logits, labels), min=0) / (math.sqrt(2) * lipschitz)


@torch.no_grad()
def certify(model: nn.Module, x: Tensor, labels: Tensor, lipschitz: float) -> Tensor:
    """Certified l2 radius per example (:func:`certified_radius`) of a ``lipschitz``-Lipschitz classifier."""
    return certified_radius(model(x), labels, lipschitz)


def input_radius(info: DatasetInfo, eps: float, norm: str, like: Tensor) -> Tensor:
    """The radius ``eps`` (pixels in [0, 1]) in the model's input units: a number for ``l2`` (the
    smallest channel's std), per channel ``(1, C, 1, 1)`` for ``linf``."""
    std = torch.tensor(info.std, dtype=like.dtype, device=like.device)
    if norm == "l2":
        return eps / std.min()
    return (eps / std).view(1, -1, *([1] * (like.dim() - 2)))


def image_range(info: DatasetInfo, like: Tensor) -> tuple[Tensor, Tensor]:
    """The model-input values of pixels 0 and 1 per channel, ``(1, C, 1, 1)`` each."""
    mean = torch.tensor(info.mean, dtype=like.dtype, device=like.device).view(1, -1, *([1] * (like.dim() - 2)))
    std = torch.tensor(info.std, dtype=like.dtype, device=like.device).view_as(mean)
    return (0 - mean) / std, (1 - mean) / std


def input_box(info: DatasetInfo, x: Tensor, eps: float) -> Box:
    """The l-infinity ball of radius ``eps`` (pixels in [0, 1]) around the model inputs ``x``,
    intersected with the image range, as a :class:`Box` in the model's input units: what the
    certificates cover and what certified training bounds."""
    radius = input_radius(info, eps, "linf", x)
    low, high = image_range(info, x)
    return Box(torch.maximum(x - radius, low), torch.minimum(x + radius, high))


def _certify_and_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    logits: Tensor,
    info: DatasetInfo,
    eps: float,
    norm: str,
    lipschitz: float | None,
    pgd_steps: int,
) -> tuple[Tensor, Tensor | None]:
    """Which examples of the batch are certified at radius ``eps`` (pixels), and the PGD adversarial
    inputs (``None`` without attack)."""
    radius = input_radius(info, eps, norm, x)
    if norm == "l2":
        safe = certified_radius(logits, y, lipschitz) >= radius
        return safe, pgd_attack(model, x, y, radius, steps=pgd_steps) if pgd_steps else None
    with torch.no_grad():
        worst = interval_logits(model, input_box(info, x, eps), y)
    safe = (worst.scatter(1, y[:, None], float("-inf")) < 0).all(dim=1)
    low, high = image_range(info, x)
    attack = pgd_linf_attack(model, x, y, radius, steps=pgd_steps, lower=low, upper=high) if pgd_steps else None
    return safe, attack


def evaluate_robustness(
    model: nn.Module,
    dataset: ImageDataset,
    eps: list[float],
    lipschitz: float | None = None,
    pgd_steps: int = 20,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    norm: str = "l2",
) -> dict:
    """Clean, certified and PGD accuracy at each radius ``eps`` (pixels in [0, 1]) in ``norm``.

    ``l2`` certifies from the logits' Lipschitz constant ``lipschitz`` (in the model's input units,
    :func:`certified_radius`); ``linf`` from interval bounds (:func:`~mondeq.robust.interval_logits`;
    the interval monDEQ or an explicit network). PGD accuracy (``pgd_steps`` steps, none when 0,
    in the image range for ``linf``) bounds robust accuracy from above, so ``certified <= PGD``
    wherever both are sound. Returns ``examples``, ``clean_accuracy``, ``norm``, ``eps``,
    ``certified_accuracy``, ``pgd_accuracy`` (``None`` without attack) and ``pgd_steps``.
    """
    if norm == "l2" and lipschitz is None:
        raise ValueError("l2 certificates need the model's Lipschitz bound")
    eps = sorted(eps)
    correct, certified, robust = 0, [0] * len(eps), [0] * len(eps)
    model.eval()
    for x, y in Batches(dataset, batch_size, device=device):
        with torch.no_grad():
            logits = model(x)
        right = logits.argmax(1) == y
        correct += right.sum().item()
        for k, e in enumerate(eps):
            safe, adversarial = _certify_and_attack(model, x, y, logits, dataset.info, e, norm, lipschitz, pgd_steps)
            certified[k] += (right & safe).sum().item()
            if adversarial is not None:
                with torch.no_grad():
                    robust[k] += (right & (model(adversarial).argmax(1) == y)).sum().item()  # x itself is in the ball
    n = len(dataset)
    return {
        "examples": n,
        "clean_accuracy": correct / n,
        "norm": norm,
        "eps": eps,
        "certified_accuracy": [c / n for c in certified],
        "pgd_accuracy": [r / n for r in robust] if pgd_steps else None,
        "pgd_steps": pgd_steps,
    }


def certify_checkpoint(
    path: str | Path,
    eps: list[float],
    norm: str = "l2",
    limit: int | None = 1000,
    pgd_steps: int = 20,
    batch_size: int = 250,
    tol: float = 1e-4,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """The robustness report of a preset classifier's checkpoint on its first ``limit`` test images,
    radii ``eps`` on the pixel scale: :func:`evaluate_robustness` in ``norm``, the equilibrium solved to
    ``tol``. In ``l2`` the bound is the model's own (``lipschitz``: by construction) or estimated
    (:func:`~mondeq.robust.lipschitz_bound`); ``linf`` needs the interval operator."""
    from ..errors import ConfigError
    from ..models import MonDEQClassifier, load_model, test_set_of
    from .lipschitz import lipschitz_bound

    model, meta = load_model(path, device)
    if not isinstance(model, MonDEQClassifier):
        raise ConfigError(
            f"certify needs a preset model (fc, single-conv, multi-conv), not {meta['model'].get('entry_point')!r}: "
            "its bounds hold for an equilibrium read out by one linear map"
        )
    model.layer.configure(tol=tol)
    report: dict = {"norm": norm}
    if norm == "l2":
        if model.config.lipschitz is not None:
            report.update(lipschitz_logits=model.config.lipschitz, lipschitz_source="by construction")
        else:
            bound = lipschitz_bound(model)
            report.update(
                m=bound.m,
                input_norm=bound.input_norm,
                readout_norm=bound.readout_norm,
                lipschitz_equilibrium=bound.equilibrium,
                lipschitz_logits=bound.logits,
                lipschitz_source="estimated by power iteration",
            )
    elif not model.config.interval:
        raise ConfigError(
            f"{path}: l-infinity certificates need the interval operator, and this model was trained without it "
            "(train one with --model fc --certified linf:EPS)"
        )
    test = test_set_of(meta, data_dir, limit)
    lipschitz = report.get("lipschitz_logits")
    report.update(evaluate_robustness(model, test, eps, lipschitz, pgd_steps, batch_size, device, norm=norm))
    return report
