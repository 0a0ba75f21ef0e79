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
one: what :class:`~mondeq.operators.IntervalFullyConnected` guarantees for every parameter value
(:math:`\rho(|W|) \le 1 - m`). :func:`equilibrium_box` iterates from a box that holds every
equilibrium of the ball (for ReLU, :math:`0 \le z^\star` and :math:`\|z^\star\|_2 \le \|Ux + b\|_2 / m`),
so each iterate holds them too: the bounds are sound however many iterations ran, and tight once
they converged. Each iterate is intersected with the previous one (still sound).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..activations import ReLU
from ..errors import ConfigError
from ..operators import IntervalFullyConnected

__all__ = ["Box", "equilibrium_box", "interval_logits", "network_box", "worst_case_logits"]


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

    def linear(self, weight: Tensor, bias: Tensor | None = None) -> Box:
        """Through ``y = x @ weight.T + bias`` (rows are samples)."""
        center = F.linear(self.center, weight, bias)
        return Box.around(center, F.linear(self.radius, weight.abs()))

    def conv2d(self, conv: nn.Conv2d) -> Box:
        center = conv._conv_forward(self.center, conv.weight, conv.bias)
        radius = conv._conv_forward(self.radius, conv.weight.abs(), None)
        return Box.around(center, radius)

    def monotone(self, function) -> Box:
        """Through an elementwise non-decreasing ``function``."""
        return Box(function(self.lower), function(self.upper))


#: :func:`equilibrium_box` tests convergence every this many iterations (extra ones only tighten the box).
CHECK_EVERY = 5


def equilibrium_box(layer, x: Box, iterations: int = 60, tol: float = 1e-6) -> tuple[Box, int]:
    """Sound bounds on the equilibria :math:`z^\\star(x')` of every input ``x'`` of the box ``x``, for a
    monDEQ ``layer`` whose operator is an :class:`~mondeq.operators.IntervalFullyConnected` and whose
    activation is ReLU; and the iterations run. Differentiable (the iterations are on the tape), so it
    serves interval bound propagation training as well as certification; ``iterations`` caps them,
    ``tol`` stops them once no bound moves by more than ``tol`` times its size in an iteration (tested
    every :data:`CHECK_EVERY` iterations)."""
    op = layer.linear
    if not isinstance(op, IntervalFullyConnected):
        raise ConfigError(
            f"interval bounds through the equilibrium need the interval operator (IntervalFullyConnected: "
            f"--model fc --certified linf:EPS), not {type(op).__name__}, whose interval map may diverge"
        )
    if not isinstance(layer.activation, ReLU):
        raise ConfigError(f"interval bounds through the equilibrium need the ReLU activation, not {layer.activation}")
    flat = Box(x.lower.flatten(1), x.upper.flatten(1))
    injection = flat.linear(op.U.weight, op.U.bias)  # U x + b over the box
    weights = op.weights()
    magnitude = weights.abs()
    # every equilibrium of the box: z >= 0 and ||z||_2 <= ||U x' + b||_2 / m <= (||centre|| + ||radius||) / m
    reach = (injection.center.norm(dim=1, keepdim=True) + injection.radius.norm(dim=1, keepdim=True)) / op.m
    z = Box(torch.zeros_like(injection.center), reach.expand_as(injection.center))
    done = 0
    while done < iterations:
        done += 1
        center = F.linear(z.center, weights) + injection.center
        radius = F.linear(z.radius, magnitude) + injection.radius
        step = Box.around(center, radius).monotone(torch.relu)
        new = Box(torch.maximum(z.lower, step.lower), torch.minimum(z.upper, step.upper))
        if done % CHECK_EVERY == 0:  # a host read-back per check: a device would wait for it every iteration
            moved = torch.maximum((new.upper - z.upper).abs(), (new.lower - z.lower).abs()).max()
            scale = new.upper.abs().max().clamp_min(1e-12)
            if float(moved.detach()) <= tol * float(scale.detach()):
                return new, done
        z = new
    return z, done


def network_box(model: nn.Module, x: Box) -> Box:
    """Bounds on the output of an explicit network built from ``Linear``, ``Conv2d``, ``ReLU``,
    ``Flatten`` and ``AvgPool2d`` layers (an ``nn.Sequential``, nested or not), over the input box."""
    box = x
    for module in _leaves(model) if isinstance(model, nn.Sequential) else [model]:
        if isinstance(module, nn.Linear):
            box = box.linear(module.weight, module.bias)
        elif isinstance(module, nn.Conv2d):
            box = box.conv2d(module)
        elif isinstance(module, nn.ReLU):
            box = box.monotone(torch.relu)
        elif isinstance(module, (nn.Flatten, nn.AvgPool2d)):
            box = Box(module(box.lower), module(box.upper))
        else:
            raise ConfigError(f"interval bounds through {type(module).__name__} are not implemented")
    return box


def _leaves(model: nn.Sequential):
    for module in model:
        if isinstance(module, nn.Sequential):
            yield from _leaves(module)
        else:
            yield module


def worst_case_logits(features: Box, readout: nn.Linear, labels: Tensor) -> Tensor:
    """Logits ``(batch, classes)`` whose entry ``j`` is minus the lower bound of
    ``logit[label] - logit[j]`` over the box of readout ``features`` (0 at the label): the largest any
    other class can get relative to the label. All negative off the label means certified; their
    cross-entropy is the interval bound propagation loss."""
    weight, bias = readout.weight, readout.bias
    difference = weight[labels][:, None, :] - weight[None, :, :]  # (batch, classes, features): w_y - w_j
    bias_difference = bias[labels][:, None] - bias[None, :]
    lower = (
        (difference.clamp(min=0) * features.lower[:, None, :]).sum(-1)
        + (difference.clamp(max=0) * features.upper[:, None, :]).sum(-1)
        + bias_difference
    )
    return -lower


def interval_logits(model: nn.Module, x: Box, labels: Tensor, iterations: int = 60) -> Tensor:
    """:func:`worst_case_logits` of ``model`` over the input box ``x``: a monDEQ classifier (its layer on
    the interval operator, its readout a pooling of the equilibrium and one linear map) or an explicit
    ``nn.Sequential`` whose last module is the linear readout."""
    layer = getattr(model, "layer", None)
    if layer is not None:
        z, _ = equilibrium_box(layer, x, iterations)
        features = Box(model.pool(z.lower), model.pool(z.upper))  # average pooling: non-negative weights
        return worst_case_logits(features, model.readout, labels)
    if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear):
        features = network_box(model[:-1], x)
        return worst_case_logits(Box(features.lower.flatten(1), features.upper.flatten(1)), model[-1], labels)
    raise ConfigError(f"no interval bounds for {type(model).__name__}: use a monDEQ classifier or an nn.Sequential")
