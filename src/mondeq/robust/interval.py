r"""Interval bounds through the equilibrium and through explicit layers, for an :math:`\ell_\infty` ball.

For an input box :math:`[x - \epsilon, x + \epsilon]` the bounds are carried as a centre and a radius:
a linear map :math:`y = Ax + c` sends them to :math:`(A\mu + c, |A| r)`, a monotone activation sends
:math:`[\underline y, \overline y]` to :math:`[\sigma(\underline y), \sigma(\overline y)]`.

Through a monDEQ (Wei & Kolter, ICLR 2022) the bounds on the equilibrium are the fixed point of the
interval map

.. math::
    [\underline z, \overline z] \mapsto \sigma\big(W\mu \pm (|W| r + |U| \epsilon) + U x + b\big),
    \qquad \mu = \tfrac12(\overline z + \underline z), \; r = \tfrac12(\overline z - \underline z),

which is unique, and reached by iterating the map, when the spectral radius of :math:`|W|` is below
one: what an :class:`~mondeq.operators.IntervalOperator` guarantees for every parameter value
(:math:`\rho(|W|) \le 1 - m`). :func:`equilibrium_box` iterates from a box that holds every
equilibrium of the ball (for ReLU, :math:`0 \le z^\star` and :math:`\|z^\star\|_2 \le \|Ux + b\|_2 / m`),
so each iterate holds them too: the bounds are sound however many iterations ran, and tight once
they converged. Each iterate is intersected with the previous one (still sound). They bound the exact
equilibria, not a solver's approximation: a certificate from them needs no allowance for solve error.

**Rounding.** With ``rounding=True`` every computed bound is widened outward by the worst rounding
error of the arithmetic that produced it: a sum of :math:`n` products computed in floating point is
within :math:`\gamma_n \sum_i |a_i x_i|`, :math:`\gamma_n = nu/(1 - nu)`, of the exact sum, in any order
(Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1; :math:`u` the unit roundoff), so a box
never shrinks below the exact one. Certificates compute in float64 with it; training does without.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..activations import ReLU
from ..errors import ConfigError
from ..operators import IntervalOperator

__all__ = ["Box", "equilibrium_box", "interval_logits", "network_box", "readout_logits", "rounding_bound", "worst_case_logits"]


def rounding_bound(terms: int, dtype: torch.dtype) -> float:
    r""":math:`\gamma_n = nu / (1 - nu)` for ``terms`` + 2 operations (the products, their sum, and the
    addition or scaling that follows) in ``dtype``: the relative bound on a computed dot product's error."""
    n = terms + 2
    u = torch.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


@dataclass
class Box:
    """Elementwise bounds ``lower <= value <= upper`` of a batch (same shapes)."""

    lower: Tensor
    upper: Tensor

    @classmethod
    def around(cls, center: Tensor, radius: Tensor) -> Box:
        return cls(center - radius, center + radius)

    @property
    def center(self) -> Tensor:
        return (self.upper + self.lower) / 2

    @property
    def radius(self) -> Tensor:
        return (self.upper - self.lower) / 2

    def split(self, rounding: bool = False) -> tuple[Tensor, Tensor]:
        """``(center, radius)``; with ``rounding`` the radius grows by the rounding error of both, so
        ``[center - radius, center + radius]`` holds the box exactly."""
        center, radius = self.center, self.radius
        if rounding:
            radius = radius + rounding_bound(2, center.dtype) * (center.abs() + radius)
        return center, radius

    def widened(self, relative: float) -> Box:
        """The box grown outward by ``relative`` times each bound's magnitude (a no-op for 0)."""
        if not relative:
            return self
        return Box(self.lower - relative * self.lower.abs(), self.upper + relative * self.upper.abs())

    def linear(self, weight: Tensor, bias: Tensor | None = None, rounding: bool = False) -> Box:
        """Through ``y = x @ weight.T + bias`` (rows are samples)."""
        center, radius = self.split(rounding)
        out_center = F.linear(center, weight, bias)
        out_radius = F.linear(radius, weight.abs())
        if rounding:
            magnitude = F.linear(center.abs() + radius, weight.abs()) + (0 if bias is None else bias.abs())
            out_radius = out_radius + rounding_bound(weight.shape[1] + 2, center.dtype) * magnitude
        return Box.around(out_center, out_radius).widened(rounding_bound(0, center.dtype) if rounding else 0)

    def conv2d(self, conv: nn.Conv2d, rounding: bool = False) -> Box:
        center, radius = self.split(rounding)
        out_center = conv._conv_forward(center, conv.weight, conv.bias)
        out_radius = conv._conv_forward(radius, conv.weight.abs(), None)
        if rounding:
            magnitude = conv._conv_forward(center.abs() + radius, conv.weight.abs(), None)
            if conv.bias is not None:
                magnitude = magnitude + conv.bias.abs().view(1, -1, 1, 1)
            out_radius = out_radius + rounding_bound(conv.weight[0].numel() + 2, center.dtype) * magnitude
        return Box.around(out_center, out_radius).widened(rounding_bound(0, center.dtype) if rounding else 0)

    def monotone(self, function) -> Box:
        """Through an elementwise non-decreasing ``function``."""
        return Box(function(self.lower), function(self.upper))


#: :func:`equilibrium_box` tests convergence every this many iterations (extra ones only tighten the box).
CHECK_EVERY = 5


def equilibrium_box(
    layer,
    x: Box,
    iterations: int = 60,
    tol: float = 1e-6,
    rounding: bool = False,
    taped: int | None = None,
    start: Box | None = None,
) -> tuple[Box, int]:
    """Sound bounds on the equilibria :math:`z^\\star(x')` of every input ``x'`` of the box ``x``, for a
    monDEQ ``layer`` whose operator is an :class:`~mondeq.operators.IntervalOperator` and whose
    activation is ReLU; and the iterations run. Differentiable (the iterations are on the tape), so it
    serves interval bound propagation training as well as certification; ``iterations`` caps them,
    ``tol`` stops them once no bound moves by more than ``tol`` times its size in an iteration (tested
    every :data:`CHECK_EVERY` iterations). ``rounding``: widen every step by its rounding error (module
    docstring), for certificates. ``taped``: with gradients enabled, only the last ``taped`` of the
    ``iterations`` are recorded for backpropagation (the earlier ones run without a tape, and ``tol`` is
    not tested): a truncated gradient at a fraction of the cost, the bounds as sound as ever.

    ``start``: iterate from this box instead (certified training: the box an example's last visit
    ended in), without intersecting the iterates. The interval map contracts (:math:`\rho(|W|) < 1`) to
    the same box from any start, but an iterate from ``start`` holds the equilibria only in that limit:
    such bounds are a training signal, never a certificate (refused with ``rounding``)."""
    if start is not None and rounding:
        raise ValueError("a certificate's interval iteration starts from its sound box, never from a stored one")
    op = layer.linear
    if not isinstance(op, IntervalOperator):
        raise ConfigError(
            f"interval bounds through the equilibrium need an interval operator (--interval with --model fc or "
            f"single-conv), not {type(op).__name__}, whose interval map may diverge"
        )
    if not isinstance(layer.activation, ReLU):
        raise ConfigError(f"interval bounds through the equilibrium need the ReLU activation, not {layer.activation}")
    dtype = x.lower.dtype
    center, radius = x.split(rounding)
    injection_center, injection_radius = op.interval_inject(center, radius)
    weights = op.interval_weights()
    if rounding:
        bias, magnitude = op.interval_inject(torch.zeros_like(center), center.abs() + radius)
        injection_radius = injection_radius + rounding_bound(op.inject_terms + 1, dtype) * (magnitude + bias.abs())
    sound = start is None
    if sound:
        z = Box(torch.zeros_like(injection_center), _reach(op, weights, injection_center, injection_radius, rounding))
    else:
        z = start
    done = 0
    if taped is not None and taped < iterations and torch.is_grad_enabled():
        with torch.no_grad():
            z, done = _iterate(op, weights, injection_center, injection_radius, z, iterations - taped, 0.0, rounding, sound)
        iterations, tol = taped, 0.0
    z, more = _iterate(op, weights, injection_center, injection_radius, z, iterations, tol, rounding, sound)
    return z, done + more


def _iterate(
    op: IntervalOperator,
    weights: tuple[Tensor, Tensor],
    injection_center: Tensor,
    injection_radius: Tensor,
    z: Box,
    iterations: int,
    tol: float,
    rounding: bool,
    intersect: bool = True,
) -> tuple[Box, int]:
    """At most ``iterations`` steps of the interval map from ``z``, each intersected with the last when
    ``intersect`` (``z`` holds every equilibrium); stops early once no bound moves by more than ``tol``
    times its size (``tol`` 0: never)."""
    dtype = z.lower.dtype
    relative = rounding_bound(op.multiply_terms + 2, dtype) if rounding else 0.0
    done = 0
    while done < iterations:
        done += 1
        z_center, z_radius = z.split(rounding)
        moved_center, moved_radius = op.interval_multiply(z_center, z_radius, weights)
        center = moved_center + injection_center
        radius = moved_radius + injection_radius
        if rounding:
            _, magnitude = op.interval_multiply(torch.zeros_like(z_center), z_center.abs() + z_radius, weights)
            radius = radius + relative * (magnitude + injection_center.abs() + radius)
        step = Box.around(center, radius).widened(rounding_bound(0, dtype) if rounding else 0).monotone(torch.relu)
        new = Box(torch.maximum(z.lower, step.lower), torch.minimum(z.upper, step.upper)) if intersect else step
        if tol and done % CHECK_EVERY == 0:  # a host read-back per check: a device would wait for it every iteration
            moved = torch.maximum((new.upper - z.upper).abs(), (new.lower - z.lower).abs()).max()
            scale = new.upper.abs().max().clamp_min(1e-12)
            if float(moved.detach()) <= tol * float(scale.detach()):
                return new, done
        z = new
    return z, done


def _reach(op: IntervalOperator, weights: tuple[Tensor, Tensor], center: Tensor, radius: Tensor, rounding: bool) -> Tensor:
    r"""An upper bound on every equilibrium of the box (ReLU: :math:`z^\star \ge 0`), the smaller of two:

    - :math:`\|z^\star\|_2 \le \|Ux + b\|_2 / m \le (\|\text{centre}\| + \|\text{radius}\|) / m` (monotonicity);
    - :math:`z^\star \le |W| z^\star + u^+` with :math:`u^+` the injection's upper bound, clipped at 0: for a
      positive :math:`v` with :math:`|W| v \le \kappa v`, :math:`\kappa < 1`
      (:meth:`~mondeq.operators.IntervalOperator.contraction`), :math:`t = \max_i z^\star_i / v_i` has
      :math:`t \le \kappa t + \max_i u^+_i / v_i`, so :math:`z^\star \le v \max_i (u^+_i / v_i) / (1 - \kappa)`.

    The second is tighter by about :math:`\sqrt n` and saves the first iterations."""
    norm_bound = (center.norm(dim=1, keepdim=True) + radius.norm(dim=1, keepdim=True)) / op.m
    v, kappa = op.contraction(weights[1])
    slack = 1e-6 if rounding else 0.0  # the norms' and the ratios' own rounding; W's (I - W >= mI to ~1e-15)
    kappa = kappa * (1 + slack)
    if kappa >= 1:
        return (norm_bound * (1 + slack)).expand_as(center)
    positive = (center + radius).clamp_min(0)
    weighted = v * ((positive / v).amax(dim=1, keepdim=True) / (1 - kappa))
    return torch.minimum(norm_bound.expand_as(center), weighted) * (1 + slack)


def network_box(model: nn.Module, x: Box, rounding: bool = False) -> Box:
    """Bounds on the output of an explicit network built from ``Linear``, ``Conv2d``, ``ReLU``,
    ``Flatten`` and ``AvgPool2d`` layers (an ``nn.Sequential``, nested or not), over the input box;
    ``rounding``: widened by each layer's rounding error (module docstring)."""
    box = x
    for module in _leaves(model) if isinstance(model, nn.Sequential) else [model]:
        if isinstance(module, nn.Linear):
            box = box.linear(module.weight, module.bias, rounding)
        elif isinstance(module, nn.Conv2d):
            box = box.conv2d(module, rounding)
        elif isinstance(module, nn.ReLU):
            box = box.monotone(torch.relu)
        elif isinstance(module, (nn.Flatten, nn.AvgPool2d)):
            box = _average(module, box, rounding)
        else:
            raise ConfigError(f"interval bounds through {type(module).__name__} are not implemented")
    return box


def _average(pool, box: Box, rounding: bool, terms: int | None = None) -> Box:
    """Through a map with non-negative weights summing to at most one per output (average pooling,
    flattening), applied to each bound; ``rounding`` widens by the error of sums of ``terms`` products
    (default: all of an example's entries, an upper bound on any window)."""
    out = Box(pool(box.lower), pool(box.upper))
    if not rounding:
        return out
    n = terms if terms is not None else box.lower[0].numel()
    magnitude = pool(torch.maximum(box.lower.abs(), box.upper.abs()))
    spread = rounding_bound(n, box.lower.dtype) * magnitude
    return Box(out.lower - spread, out.upper + spread)


def _leaves(model: nn.Sequential):
    for module in model:
        if isinstance(module, nn.Sequential):
            yield from _leaves(module)
        else:
            yield module


def worst_case_logits(features: Box, readout: nn.Linear, labels: Tensor, rounding: bool = False) -> Tensor:
    """Logits ``(batch, classes)`` whose entry ``j`` is minus the lower bound of
    ``logit[label] - logit[j]`` over the box of readout ``features`` (0 at the label): the largest any
    other class can get relative to the label. All negative off the label means certified; their
    cross-entropy is the interval bound propagation loss. ``rounding``: the lower bound lowered by its
    rounding error (the weight differences included)."""
    weight, bias = readout.weight, readout.bias
    difference = weight[labels][:, None, :] - weight[None, :, :]  # (batch, classes, features): w_y - w_j
    bias_difference = bias[labels][:, None] - bias[None, :]
    lower = (
        (difference.clamp(min=0) * features.lower[:, None, :]).sum(-1)
        + (difference.clamp(max=0) * features.upper[:, None, :]).sum(-1)
        + bias_difference
    )
    if rounding:
        largest = torch.maximum(features.lower.abs(), features.upper.abs())
        magnitude = (difference.abs() * largest[:, None, :]).sum(-1) + bias_difference.abs()
        lower = lower - rounding_bound(2 * weight.shape[1] + 2, lower.dtype) * magnitude
    return -lower


def readout_logits(model: nn.Module, z: Box, labels: Tensor, rounding: bool = False) -> Tensor:
    """:func:`worst_case_logits` of a monDEQ classifier over the box ``z`` of its equilibria (through its
    average pooling, whose weights are non-negative, and its linear readout)."""
    return worst_case_logits(_average(model.pool, z, rounding), model.readout, labels, rounding)


def interval_logits(
    model: nn.Module,
    x: Box,
    labels: Tensor,
    iterations: int = 60,
    rounding: bool = False,
    taped: int | None = None,
    tol: float = 1e-6,
) -> Tensor:
    """:func:`worst_case_logits` of ``model`` over the input box ``x``: a monDEQ classifier (its layer on
    an interval operator, its readout a pooling of the equilibrium and one linear map) or an explicit
    ``nn.Sequential`` whose last module is the linear readout. ``rounding``: every bound widened by its
    rounding error (module docstring), as certificates use it; ``taped`` and ``tol``: as :func:`equilibrium_box`."""
    layer = getattr(model, "layer", None)
    if layer is not None:
        z, _ = equilibrium_box(layer, x, iterations, tol, rounding, taped)
        return readout_logits(model, z, labels, rounding)
    if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear):
        features = network_box(model[:-1], x, rounding)
        flat = Box(features.lower.flatten(1), features.upper.flatten(1))
        return worst_case_logits(flat, model[-1], labels, rounding)
    raise ConfigError(f"no interval bounds for {type(model).__name__}: use a monDEQ classifier or an nn.Sequential")
