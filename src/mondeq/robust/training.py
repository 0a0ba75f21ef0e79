r"""Losses and schedules of certified training.

- :math:`\ell_2`, for a classifier that is :math:`\gamma`-Lipschitz by construction: the
  cross-entropy of the logits with every other class raised by :math:`\sqrt 2 \gamma \epsilon`
  (Tsuzuku et al., 2018): once its margin exceeds that, an example is certified at :math:`\epsilon`.
- :math:`\ell_\infty`, interval bound propagation (Gowal et al., 2018; through the equilibrium,
  Wei & Kolter, 2022): :math:`\kappa \, \mathrm{CE}(f(x)) + (1 - \kappa) \, \mathrm{CE}(\hat f(x))` with
  :math:`\hat f` the worst-case logits of the interval bounds; :math:`\epsilon` rises linearly from 0 after
  a warm-up while :math:`\kappa` falls from 1 to 1/2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..data import DatasetInfo
from ..errors import ConfigError
from ..reuse import INTERVAL
from .certificates import input_box, input_radius
from .interval import Box, equilibrium_box, interval_logits, readout_logits

__all__ = ["CertifiedObjective", "interval_loss", "lipschitz_margin_loss", "parse_certified"]

NORMS = ("l2", "linf")


def parse_certified(text: str) -> tuple[str, float]:
    """``"linf:0.1"`` as ``("linf", 0.1)``: the norm and the radius (in pixels in [0, 1])."""
    norm, _, eps = str(text).partition(":")
    try:
        value = float(eps)
    except ValueError:
        value = math.nan
    if norm not in NORMS or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"certified must read NORM:EPS with NORM one of {', '.join(NORMS)} and EPS > 0, got {text!r}")
    return norm, value


def lipschitz_margin_loss(logits: Tensor, labels: Tensor, lipschitz: float, eps: float, label_smoothing: float = 0.0) -> Tensor:
    r"""Cross-entropy of the logits with every class but the label raised by :math:`\sqrt 2 L \epsilon`."""
    offset = math.sqrt(2) * lipschitz * eps
    raised = logits + offset * (1 - F.one_hot(labels, logits.shape[1]).to(logits))
    return F.cross_entropy(raised, labels, label_smoothing=label_smoothing)


def interval_loss(logits: Tensor, worst: Tensor, labels: Tensor, kappa: float, label_smoothing: float = 0.0) -> Tensor:
    r""":math:`\kappa \, \mathrm{CE}(\text{logits}) + (1 - \kappa) \, \mathrm{CE}(\text{worst-case logits})`."""
    clean = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return kappa * clean + (1 - kappa) * F.cross_entropy(worst, labels)


#: Interval iterations through the equilibrium per training step, and how many of the last are on the
#: tape (the bounds are sound after any number; from :func:`~mondeq.robust.equilibrium_box`'s start box
#: they are close to converged by 8; the gradient through the last few is a truncated one). A batch whose
#: examples all start from the boxes of their last visit runs only the taped ones.
TRAINING_ITERATIONS, TAPED_ITERATIONS = 8, 3


@dataclass(frozen=True)
class CertifiedObjective:
    """The certified-training schedule: the radius ``eps`` after ``warmup`` epochs at 0 and a linear
    ramp over ``ramp`` epochs; the weight of the clean loss falls from 1 to ``kappa`` over the same ramp.
    ``iterations``: interval iterations through an equilibrium per step, the last ``taped`` of them on the tape."""

    norm: str
    eps: float
    warmup: float = 1.0
    ramp: float = 5.0
    kappa: float = 0.5
    iterations: int = TRAINING_ITERATIONS
    taped: int = TAPED_ITERATIONS

    def at(self, epoch: float) -> tuple[float, float]:
        """``(eps, kappa)`` at fractional ``epoch``."""
        progress = min(max((epoch - self.warmup) / self.ramp, 0.0), 1.0) if self.ramp > 0 else float(epoch >= self.warmup)
        return self.eps * progress, 1.0 - (1.0 - self.kappa) * progress

    def bind(
        self, model: nn.Module, info: DatasetInfo, lipschitz: float | None = None, label_smoothing: float = 0.0
    ) -> Callable[[Tensor, Tensor, Tensor, float], Tensor]:
        """The training objective ``objective(logits, x, y, epoch)`` of ``model`` on the data ``info``
        (with ``lipschitz``, the model's l2 bound, and ``label_smoothing`` fixed): :meth:`loss` with
        everything but the batch and the epoch bound once."""

        def objective(logits: Tensor, x: Tensor, labels: Tensor, epoch: float) -> Tensor:
            return self.loss(model, x, logits, labels, epoch, info, lipschitz, label_smoothing)

        return objective

    def loss(
        self,
        model: nn.Module,
        x: Tensor,
        logits: Tensor,
        labels: Tensor,
        epoch: float,
        info: DatasetInfo,
        lipschitz: float | None = None,
        label_smoothing: float = 0.0,
    ) -> Tensor:
        """The training loss of the batch ``x`` (model inputs, normalised) at fractional ``epoch``:
        :func:`lipschitz_margin_loss` for ``l2`` (``lipschitz``: the model's bound, input units),
        :func:`interval_loss` over the box of the ball clipped to the image range for ``linf``."""
        eps, kappa = self.at(epoch)
        if self.norm == "l2":
            radius = float(input_radius(info, eps, "l2", x))
            return lipschitz_margin_loss(logits, labels, lipschitz, radius, label_smoothing)
        if eps == 0:
            return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        box = input_box(info, x, eps)
        selection = _interval_rows(model)
        if selection is None:
            worst = interval_logits(model, box, labels, self.iterations, taped=self.taped)
            return interval_loss(logits, worst, labels, kappa, label_smoothing)
        like = x.new_empty(len(x), model.layer.linear.features)
        lower, upper = (selection.start(direction, like) for direction in INTERVAL)
        warm = lower is not None and upper is not None and bool(lower.rows.all()) and bool(upper.rows.all())
        if warm:  # every example starts where its last visit ended: the taped iterations only
            z, _ = equilibrium_box(model.layer, box, self.taped, taped=self.taped, start=Box(lower.pre, upper.pre))
        else:
            z, _ = equilibrium_box(model.layer, box, self.iterations, taped=self.taped)
        for direction, bound in zip(INTERVAL, (z.lower, z.upper)):
            selection.keep(direction, bound)
        return interval_loss(logits, readout_logits(model, z, labels), labels, kappa, label_smoothing)


def _interval_rows(model: nn.Module):
    """The current batch's rows of the model's fixed-point store when it keeps interval boxes, else ``None``."""
    store = getattr(getattr(model, "layer", None), "fixed_points", None)
    if store is None or not set(INTERVAL) <= set(store.directions):
        return None
    return store.active()
