r"""Lipschitz bounds, certified robustness and an l2 PGD attack for monDEQ classifiers.

Pabbaraju, Winston & Kolter (ICLR 2021): with :math:`I - W \succeq mI` and :math:`\sigma`
1-Lipschitz and monotone, the equilibrium map :math:`x \mapsto z^\star(x)` satisfies

.. math::
    \|z^\star(x) - z^\star(x')\|_2 \le \frac{\|U\|_2}{m} \|x - x'\|_2 ,

so the logits :math:`R z^\star` (readout :math:`R`, pooling included) are
:math:`\|R\|_2 \|U\|_2 / m`-Lipschitz. A logit margin :math:`M` (top class minus runner-up)
changes by at most :math:`\sqrt 2 \, L \|\delta\|` under a perturbation :math:`\delta`; we use the
paper's conservative :math:`2 L \|\delta\|`, so the certified :math:`\ell_2` radius is
:math:`M / (2L)`.

All norms are spectral norms found by power iteration on the model's own linear maps
(autograd gives the adjoints), so convolutions need no dense matrices. Power iteration gives a
lower estimate of each norm; the bound multiplies it by ``1 + slack`` (1% by default) after
checking convergence, which the tests compare against dense SVDs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import Batches, ImageDataset
from .linalg import largest_singular_value
from .models import MonDEQClassifier

__all__ = [
    "LipschitzBound",
    "certified_radius",
    "certify",
    "evaluate_robustness",
    "lipschitz_bound",
    "logit_margin",
    "pgd_attack",
    "spectral_norm",
    "weight_perturbation_bound",
]


def spectral_norm(
    linear: Callable[[Tensor], Tensor],
    shape: tuple[int, ...],
    iterations: int = 200,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    tol: float = 1e-7,
) -> float:
    r""":math:`\|A\|_2` of a linear map ``linear`` on tensors of ``shape``, by power iteration on :math:`A^\top A`.

    The adjoint is taken by autograd, so ``linear`` may be any differentiable linear function.
    """
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(shape, generator=generator, dtype=dtype)

    def gram(v: Tensor) -> Tensor:
        with torch.enable_grad():
            x = v.clone().requires_grad_(True)
            y = linear(x)
            (w,) = torch.autograd.grad(y, x, y)  # A^T A v
        return w

    return largest_singular_value(gram, start, iterations, tol)


@dataclass
class LipschitzBound:
    """Spectral norms and the resulting Lipschitz bounds (l2) of a monDEQ classifier."""

    input_norm: float  # ||U||_2
    readout_norm: float  # ||R||_2, pooling included
    m: float
    slack: float

    @property
    def equilibrium(self) -> float:
        """Bound on the Lipschitz constant of x -> z*(x)."""
        return (1 + self.slack) * self.input_norm / self.m

    @property
    def logits(self) -> float:
        """Bound on the Lipschitz constant of x -> logits(x)."""
        return (1 + self.slack) ** 2 * self.readout_norm * self.input_norm / self.m


def lipschitz_bound(model: MonDEQClassifier, slack: float = 0.01) -> LipschitzBound:
    """Lipschitz bounds of ``model`` (computed in float64 on a copy of the weights)."""
    model = _float64_copy(model)
    op = model.layer.linear
    c = model.config
    shape = (1, c.in_channels, c.image_size, c.image_size)
    zero_injection = op.inject(torch.zeros(shape, dtype=torch.float64)).detach()
    input_norm = spectral_norm(lambda x: op.inject(x) - zero_injection, shape)
    readout = model.readout

    def read(z: Tensor) -> Tensor:
        return F.linear(model.pool(z), readout.weight)

    readout_norm = spectral_norm(read, (1, op.features))
    return LipschitzBound(input_norm=input_norm, readout_norm=readout_norm, m=op.m, slack=slack)


@torch.no_grad()
def weight_perturbation_bound(
    model: MonDEQClassifier, x: Tensor, weight: float, injection: float = 0.0, bias: float = 0.0
) -> Tensor:
    r"""Per-example bound on :math:`\|z^\star_{\theta'}(x) - z^\star_\theta(x)\|_2` for perturbed weights.

    With :math:`\|W' - W\|_2 \le` ``weight``, :math:`\|U' - U\|_2 \le` ``injection`` and
    :math:`\|b' - b\|_2 \le` ``bias``, the perturbed equilibrium solves the unperturbed system
    with its injection shifted by :math:`e = (W - W')z^\star + (U - U')x + (b - b')`; the same
    monotonicity argument as for inputs gives :math:`\|\Delta z\| \le \|e\| / m \le
    (\text{weight} \|z^\star\| + \text{injection} \|x\| + \text{bias}) / m` (the perturbed
    operator keeps margin :math:`m`, as every parameter value does).
    """
    z = model.layer.linear.flatten(model.layer(x))
    return (weight * z.norm(dim=1) + injection * x.flatten(1).norm(dim=1) + bias) / model.layer.linear.m


def _float64_copy(model: MonDEQClassifier) -> MonDEQClassifier:
    clone = MonDEQClassifier(model.config).double()
    clone.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    clone.layer.alpha = model.layer.alpha
    return clone


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Logit of the true class minus the largest other logit (negative when misclassified)."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


@torch.no_grad()
def certify(model: MonDEQClassifier, x: Tensor, labels: Tensor, lipschitz: float) -> Tensor:
    """Certified l2 radius per example: ``margin / (2 L)`` when correctly classified, else 0."""
    return certified_radius(model(x), labels, lipschitz)


def certified_radius(logits: Tensor, labels: Tensor, lipschitz: float) -> Tensor:
    """``margin / (2 L)`` per example from its logits, 0 when misclassified."""
    return torch.clamp(logit_margin(logits, labels), min=0) / (2 * lipschitz)


def pgd_attack(
    model: MonDEQClassifier, x: Tensor, labels: Tensor, eps: float | Tensor, steps: int = 20, step_size: float | None = None
) -> Tensor:
    """l2 projected gradient ascent on the cross-entropy, within ``||delta||_2 <= eps`` per example.

    ``eps`` may be a per-example tensor. Inputs are not clipped to an image range (the bound
    holds on all of input space, so the attack may use all of it).
    """
    eps = torch.as_tensor(eps, dtype=x.dtype).expand(x.shape[0]).reshape(-1, *([1] * (x.dim() - 1)))
    step = 2.5 * eps / steps if step_size is None else torch.full_like(eps, step_size)
    delta = torch.zeros_like(x)
    was_training = model.training
    model.eval()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).reshape_as(eps)
            delta = delta + step * grad / norm
            scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12).reshape_as(eps)).clamp(max=1.0)
            delta = delta * scale
    model.train(was_training)
    return (x + delta).detach()


def evaluate_robustness(
    model: torch.nn.Module,
    dataset: ImageDataset,
    eps: list[float],
    lipschitz: float,
    pgd_steps: int = 20,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
) -> dict:
    """Clean, certified and PGD accuracy of any classifier whose logits are ``lipschitz``-Lipschitz (l2).

    Certified at radius ``eps``: correctly classified with certified radius ``margin / (2L) >= eps``.
    PGD accuracy (``pgd_steps`` steps of :func:`pgd_attack`, none when 0) is an upper bound on
    robust accuracy, so ``certified <= PGD`` at every radius. Returns the fractions as a dict
    (``examples``, ``clean_accuracy``, ``eps``, ``certified_accuracy``, ``pgd_accuracy``, ``pgd_steps``).
    """
    eps = sorted(eps)
    correct, certified, robust = 0, [0] * len(eps), [0] * len(eps)
    model.eval()
    for x, y in Batches(dataset, batch_size, device=device):
        with torch.no_grad():
            logits = model(x)
        right = logits.argmax(1) == y
        radius = certified_radius(logits, y, lipschitz)
        correct += right.sum().item()
        for k, e in enumerate(eps):
            certified[k] += (right & (radius >= e)).sum().item()
            if pgd_steps:
                adversarial = pgd_attack(model, x, y, e, steps=pgd_steps)
                with torch.no_grad():
                    robust[k] += (model(adversarial).argmax(1) == y).sum().item()
    n = len(dataset)
    return {
        "examples": n,
        "clean_accuracy": correct / n,
        "eps": eps,
        "certified_accuracy": [c / n for c in certified],
        "pgd_accuracy": [r / n for r in robust] if pgd_steps else None,
        "pgd_steps": pgd_steps,
    }


def certify_checkpoint(
    path: str | Path,
    eps: list[float],
    limit: int | None = 1000,
    pgd_steps: int = 20,
    batch_size: int = 250,
    tol: float = 1e-4,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """The robustness report of a preset classifier's checkpoint on the first ``limit`` test images:
    its Lipschitz bound (``m``, ``input_norm``, ``readout_norm``, ``lipschitz_equilibrium``,
    ``lipschitz_logits``) and :func:`evaluate_robustness`'s clean, certified and PGD accuracy at each
    radius, the equilibrium solved to ``tol`` (margins of the true equilibrium)."""
    from .errors import ConfigError
    from .models import load_model, test_set_of

    model, meta = load_model(path, device)
    if not isinstance(model, MonDEQClassifier):
        raise ConfigError(
            f"certify needs a preset model (fc, single-conv, multi-conv), not {meta['model'].get('entry_point')!r}: "
            "its bound ||R|| ||U|| / m holds for an equilibrium read out by one linear map"
        )
    model.layer.configure(tol=tol)
    bound = lipschitz_bound(model)
    test = test_set_of(meta, data_dir, limit)
    robustness = evaluate_robustness(model, test, eps, bound.logits, pgd_steps, batch_size, device)
    return {
        "m": bound.m,
        "input_norm": bound.input_norm,
        "readout_norm": bound.readout_norm,
        "lipschitz_equilibrium": bound.equilibrium,
        "lipschitz_logits": bound.logits,
        **robustness,
    }
