r"""Lipschitz bounds of monDEQ classifiers (Pabbaraju, Winston & Kolter, ICLR 2021).

With :math:`I - W \succeq mI` and :math:`\sigma` 1-Lipschitz and monotone, the equilibrium map
:math:`x \mapsto z^\star(x)` satisfies

.. math::
    \|z^\star(x) - z^\star(x')\|_2 \le \frac{\|U\|_2}{m} \|x - x'\|_2 ,

so the logits :math:`R z^\star` (readout :math:`R`, pooling included) are
:math:`\|R\|_2 \|U\|_2 / m`-Lipschitz. Here the norms are estimated by power iteration on the
model's own linear maps (autograd gives the adjoints), so convolutions need no dense matrices:
a lower estimate of each norm, multiplied by ``1 + slack`` (1% by default) after checking
convergence, which the tests compare against dense SVDs. A classifier built with a Lipschitz
bound (:class:`~mondeq.models.ModelConfig` ``lipschitz``) enforces the same product with exact
norms instead (:class:`~mondeq.models.NormBound`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..linalg import largest_singular_value
from ..models import MonDEQClassifier

__all__ = ["LipschitzBound", "lipschitz_bound", "spectral_norm", "weight_perturbation_bound"]


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
    """Lipschitz bounds of ``model`` (computed in float64 on a copy of the weights) by power iteration.
    A classifier built with ``lipschitz=GAMMA`` needs none: it is ``GAMMA``-Lipschitz by construction."""
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
