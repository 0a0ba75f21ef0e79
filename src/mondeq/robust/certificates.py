r"""Certified accuracy, from a Lipschitz bound (:math:`\ell_2`) or interval bounds (:math:`\ell_\infty`),
beside the accuracy under attack that it must never exceed.

Radii are given on the pixel scale (images in [0, 1]); the models see normalised inputs
:math:`(x - \mu_c) / \sigma_c`, so an :math:`\ell_2` ball of radius :math:`\epsilon` lies in the ball of
radius :math:`\epsilon / \min_c \sigma_c` of the model's input, and an :math:`\ell_\infty` ball is the box of
half-widths :math:`\epsilon / \sigma_c` per channel.

**What a certificate accounts for.** It is a statement about the exact equilibrium network of the
stored weights, proved from the numbers the program computed:

- *the solve's remaining error* (:math:`\ell_2`): a solver stops at a tolerance, at some :math:`z` near
  :math:`z^\star`. With :math:`r = z - \sigma(Wz + Ux + b)`, :math:`z' = \sigma(Wz + Ux + b)` is the exact
  equilibrium of the injection shifted by :math:`Wr` (:math:`z' = \sigma(Wz' + Wr + Ux + b)`), and the
  equilibrium is :math:`1/m`-Lipschitz in its injection, so
  :math:`\|z - z^\star\| \le \|r\| + \|Wr\| / m` (:func:`equilibrium_error`). The logits move by at most
  :math:`\|RP\| \|z - z^\star\|`, each difference of two logits by :math:`\sqrt 2` times that, and the
  margin is lowered by it before it is compared with :math:`\sqrt 2 L \epsilon`. :math:`\ell_\infty`
  certificates need no allowance: their interval bounds hold every exact equilibrium of the ball after any
  number of iterations (:func:`~mondeq.robust.equilibrium_box`).
- *rounding*: the margins, the equilibrium error and the interval bounds are computed in float64 on a
  float64 copy of the weights; interval bounds are widened outward by the rounding error of each operation
  (:func:`~mondeq.robust.rounding_bound`), and the :math:`\ell_2` margin is lowered by
  :data:`FLOAT64_SLACK` of the quantities it is computed from; a bound that holds "by construction" is
  raised by :data:`PARAMETRISATION_SLACK`, the float32 rounding of the parametrisation that enforces it.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import tolerances
from ..data import Batches, DatasetInfo, ImageDataset
from .attacks import pgd_attack, pgd_linf_attack
from .interval import Box, interval_logits

__all__ = [
    "FLOAT64_SLACK",
    "PARAMETRISATION_SLACK",
    "certified_margins",
    "equilibrium_error",
    "certified_radius",
    "radius_of_margin",
    "certify_checkpoint",
    "image_range",
    "input_box",
    "certify",
    "evaluate_robustness",
    "input_radius",
    "logit_margin",
]


#: Relative allowance for float64 rounding in the l2 margin and the equilibrium error (their computed
#: errors are ~1e-15 relative, FFTs included).
FLOAT64_SLACK = 1e-9
#: Relative allowance on a Lipschitz bound enforced by a float32 parametrisation (a weight scaled to norm
#: ``c`` has, as stored, norm ``c`` to within a few float32 roundings).
PARAMETRISATION_SLACK = 1e-5
#: Interval iterations and tolerance of l-infinity certificates (extra iterations only tighten the bounds).
CERTIFY_ITERATIONS, CERTIFY_TOL = 100, 1e-7


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Logit of the true class minus the largest other logit (negative when misclassified)."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def radius_of_margin(margin: Tensor, lipschitz: float) -> Tensor:
    r"""``margin / (sqrt(2) L)``, 0 for a negative margin: the difference of two logits of an
    :math:`L`-Lipschitz map is :math:`\sqrt 2 L`-Lipschitz, so no perturbation of a smaller norm flips it."""
    return torch.clamp(margin, min=0) / (math.sqrt(2) * lipschitz)


def certified_radius(logits: Tensor, labels: Tensor, lipschitz: float) -> Tensor:
    """:func:`radius_of_margin` of each example's :func:`logit_margin` (0 when misclassified)."""
    return radius_of_margin(logit_margin(logits, labels), lipschitz)


@torch.no_grad()
def equilibrium_error(layer: nn.Module, x: Tensor, z: Tensor | tuple[Tensor, ...]) -> Tensor:
    r"""Per-example bound on :math:`\|z - z^\star(x)\|_2` for any hidden state ``z`` of the monDEQ
    ``layer``: :math:`\|r\| + \|Wr\| / m` with :math:`r = z - \sigma(Wz + Ux + b)` (module docstring),
    raised by :data:`FLOAT64_SLACK` of the quantities it is computed from. Compute it in float64."""
    op = layer.linear
    flat = op.flatten(z).to(x.dtype)
    pre = op.multiply(flat) + op.inject(x)
    residual = flat - layer.activation(pre)
    bound = residual.norm(dim=1) + op.multiply(residual).norm(dim=1) / op.m
    scale = (flat.norm(dim=1) + pre.norm(dim=1)) / op.m
    return bound * (1 + FLOAT64_SLACK) + FLOAT64_SLACK * scale


def readout_norm(model: nn.Module) -> float:
    r""":math:`\|RP\|_2` of a monDEQ classifier's readout: the exact norm of the readout weight (float64)
    times the pooling's norm where the kind states it, else a power-iteration estimate of the whole."""
    from ..models import KINDS, linear_norm
    from .lipschitz import lipschitz_bound

    kind = KINDS[model.config.kind]
    if kind.pool_norm is None:
        return lipschitz_bound(model).readout_norm
    return float(linear_norm(model.readout.weight.detach().double())) * kind.pool_norm(model.config)


@torch.no_grad()
def certified_margins(
    model: nn.Module, x: Tensor, labels: Tensor, norm_of_readout: float | None = None, exact: nn.Module | None = None
) -> Tensor:
    r"""Logit margins (:func:`logit_margin`) that hold for the exact model, computed in float64: for a
    monDEQ classifier (``model.layer``, ``model.pool``, ``model.readout``) the equilibrium is solved by its
    own solver, and the margin lowered by :math:`\sqrt 2 \|RP\|` times :func:`equilibrium_error`
    (``norm_of_readout``: :math:`\|RP\|`, default :func:`readout_norm`); for any other model its float64
    copy's margin. Both lowered by :data:`FLOAT64_SLACK` of the logits' size. ``exact``: that float64
    copy of ``model``, when the caller keeps one across batches."""
    exact = _float64_copy(model) if exact is None else exact
    x64 = x.detach().double()
    layer = getattr(model, "layer", None)
    if layer is None:
        logits = exact(x64)
        allowance = torch.zeros_like(logits[:, 0])
    else:
        z = layer(x)
        z64 = tuple(t.double() for t in z) if isinstance(z, tuple) else z.double()
        logits = exact.readout(exact.pool(z64))
        spread = readout_norm(exact) if norm_of_readout is None else norm_of_readout
        allowance = math.sqrt(2) * spread * equilibrium_error(exact.layer, x64, z64)
    size = logits.abs().amax(dim=1)
    return logit_margin(logits, labels) - allowance - FLOAT64_SLACK * (1 + size)


def _float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` (its solver settings kept; equilibria solved afresh)."""
    clone = copy.deepcopy(model).double()
    clone.eval()
    return clone


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
    exact: nn.Module,
    x: Tensor,
    y: Tensor,
    margins: Tensor | None,
    info: DatasetInfo,
    eps: float,
    norm: str,
    lipschitz: float | None,
    pgd_steps: int,
) -> tuple[Tensor, Tensor | None]:
    """Which examples of the batch are certified at radius ``eps`` (pixels), and the PGD adversarial
    inputs (``None`` without attack). ``exact``: the float64 copy of ``model`` for interval bounds;
    ``margins``: :func:`certified_margins` for l2."""
    radius = input_radius(info, eps, norm, x)
    if norm == "l2":
        safe = radius_of_margin(margins, lipschitz * (1 + PARAMETRISATION_SLACK)) > radius
        return safe, pgd_attack(model, x, y, radius, steps=pgd_steps) if pgd_steps else None
    with torch.no_grad():
        x64 = x.double()
        box = input_box(info, x64, eps).widened(torch.finfo(torch.float64).eps)
        worst = interval_logits(exact, box, y, CERTIFY_ITERATIONS, rounding=True, tol=CERTIFY_TOL)
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
    progress: bool = False,
) -> dict:
    """Clean, certified and PGD accuracy at each radius ``eps`` (pixels in [0, 1]) in ``norm``.

    ``l2`` certifies from the logits' Lipschitz constant ``lipschitz`` (in the model's input units) and
    :func:`certified_margins` (the solve's error and rounding allowed for); ``linf`` from interval bounds
    computed in float64 and widened by their rounding error (:func:`~mondeq.robust.interval_logits`;
    an interval monDEQ or an explicit network). PGD accuracy (``pgd_steps`` steps, none when 0,
    in the image range for ``linf``) bounds robust accuracy from above, so ``certified <= PGD``
    wherever both are sound. ``progress``: a progress bar with its ETA on standard error. Returns
    ``examples``, ``clean_accuracy``, ``norm``, ``eps``,
    ``certified_accuracy``, ``pgd_accuracy`` (``None`` without attack) and ``pgd_steps``.
    """
    if norm == "l2" and lipschitz is None:
        raise ValueError("l2 certificates need the model's Lipschitz bound")
    eps = sorted(eps)
    correct, certified, robust = 0, [0] * len(eps), [0] * len(eps)
    model.eval()
    exact = _float64_copy(model)  # the certificates' float64 copy, made once for every batch
    spread = readout_norm(exact) if norm == "l2" and hasattr(model, "layer") else None
    batches = Batches(dataset, batch_size, device=device)
    bar = _bar(len(batches), f"certify {norm}") if progress else None
    for x, y in batches:
        with torch.no_grad():
            logits = model(x)
        right = logits.argmax(1) == y
        correct += right.sum().item()
        margins = certified_margins(model, x, y, spread, exact) if norm == "l2" else None
        for k, e in enumerate(eps):
            safe, adversarial = _certify_and_attack(model, exact, x, y, margins, dataset.info, e, norm, lipschitz, pgd_steps)
            certified[k] += (right & safe).sum().item()
            if adversarial is not None:
                with torch.no_grad():
                    robust[k] += (right & (model(adversarial).argmax(1) == y)).sum().item()  # x itself is in the ball
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
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


def _bar(total: int, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="batch", file=sys.stderr)


def certify_checkpoint(
    path: str | Path,
    eps: list[float],
    norm: str = "l2",
    limit: int | None = 1000,
    pgd_steps: int = 20,
    batch_size: int = 250,
    tol: float = tolerances.EVALUATION,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    weights: str = "average",
) -> dict:
    """The robustness report of a preset classifier's checkpoint on its first ``limit`` test images,
    radii ``eps`` on the pixel scale: :func:`evaluate_robustness` in ``norm``, the equilibrium solved to
    ``tol``. In ``l2`` the bound is the model's own (``lipschitz``: by construction) or estimated
    (:func:`~mondeq.robust.lipschitz_bound`); ``linf`` needs the interval operator."""
    from ..checkpoint import weights_taken
    from ..errors import ConfigError
    from ..models import MonDEQClassifier, load_model, test_set_of
    from .lipschitz import lipschitz_bound

    model, meta = load_model(path, device, weights)
    if not isinstance(model, MonDEQClassifier):
        raise ConfigError(
            f"certify needs a preset model (fc, single-conv, multi-conv), not {meta['model'].get('entry_point')!r}: "
            "its bounds hold for an equilibrium read out by one linear map"
        )
    model.layer.configure(tol=tol)
    average = meta["average"] if weights_taken(meta, weights) == "average" else None
    report: dict = {"norm": norm, "weights": f"average {average['spec']} ({average['updates']} steps)" if average else "model"}
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
            "(train one with --interval --certified linf:EPS, --model fc or single-conv)"
        )
    test = test_set_of(meta, data_dir, limit)
    lipschitz = report.get("lipschitz_logits")
    report.update(evaluate_robustness(model, test, eps, lipschitz, pgd_steps, batch_size, device, norm, progress))
    return report
