"""One training step and the fixed-point store a run keeps: shared by :class:`~mondeq.train.Trainer`
(``mondeq train``) and the benchmarks' time-budgeted loop, so both train alike."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..gradients import Implicit
from ..reuse import DIRECTIONS, INTERVAL, FixedPointStore
from .config import TrainConfig
from .schedule import apply_learning_rate, learning_rate, tune_alpha

__all__ = ["Objective", "reuse_store", "train_step", "training_tolerance"]

#: ``objective(logits, x, y, epoch)``: the loss of batch ``(x, y)`` whose logits are ``logits``, at
#: fractional ``epoch``, ready for ``backward``.
Objective = Callable[[Tensor, Tensor, Tensor, float], Tensor]


def reuse_store(
    config: TrainConfig, model: nn.Module, examples: int, device: torch.device | str = "cpu"
) -> FixedPointStore | None:
    """The fixed-point store that ``config.reuse`` asks for (and, for certified l-infinity training with
    ``config.certified_reuse``, the interval iteration's boxes), for ``examples`` training examples of
    ``model`` (a module with a monDEQ ``layer``), within ``config.reuse_memory`` GB; ``None`` when nothing
    is kept. ``both`` needs a gradient that solves a backward problem (one line otherwise)."""
    if config.reuse == "both" and not isinstance(model.layer.gradient, Implicit):
        raise ConfigError(
            f"reuse 'both' keeps the backward solve's fixed points, but the gradient {model.layer.gradient.name!r} "
            "solves no backward problem: use --reuse forward"
        )
    solves = {"off": (), "forward": DIRECTIONS[:1], "both": DIRECTIONS[:2]}[config.reuse]
    certified = config.certified_objective()
    boxes = INTERVAL if config.certified_reuse and certified is not None and certified.norm == "linf" else ()
    if not solves and not boxes:
        return None
    return FixedPointStore(
        examples,
        model.layer.linear.features,
        directions=solves + boxes,
        max_bytes=int(config.reuse_memory * 1e9),
        device=device,
    )


def training_tolerance(config: TrainConfig, tol: float, lr: float) -> float:
    r"""The tolerance of a training step's solves at learning rate ``lr``: the model's ``tol`` without
    ``config.tol_peak``; with it, :math:`\mathrm{tol}\,(\mathrm{tol_{peak}}/\mathrm{tol})^{\mathrm{lr}/\mathrm{lr_{peak}}}`,
    loose while the learning rate is high (where an exact equilibrium buys little) and back to
    ``tol`` as it falls."""
    if config.tol_peak is None:
        return tol
    return tol * (config.tol_peak / tol) ** min(lr / config.lr, 1.0)


def _scheduled_tolerance(layer: nn.Module, config: TrainConfig, lr: float) -> contextlib.AbstractContextManager:
    """The layer's solver settings for one step of the tolerance schedule: the forward tolerance of
    :func:`training_tolerance`, the backward one scaled alike."""
    forward, backward = layer.forward_options.tol, layer.backward_options.tol
    tol = training_tolerance(config, forward, lr)
    return layer.options(tol=min(tol, 0.5), backward_tol=min(backward * tol / forward, 0.5))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    x: Tensor,
    y: Tensor,
    objective: Objective,
    epoch: float,
    progress: float,
    *,
    tune: bool = False,
    share: Callable[[float], float] = float,
    forward: Callable[[Tensor], Tensor] | None = None,
    store: FixedPointStore | None = None,
    examples: Tensor | None = None,
    check_loss: Callable[[float], None] | None = None,
) -> tuple[float, Tensor]:
    """One optimiser step on the batch ``(x, y)`` at fractional ``epoch``, ``progress`` of the way
    through the run's budget (the one-cycle schedule's clock); returns the loss and the logits.

    ``tune``: search the step size alpha first (``share`` makes every process agree on it);
    ``forward``: what computes the logits (default ``model``; the trainer's distributed wrapper);
    ``store`` and ``examples``: the fixed-point store and the batch's example indices, so the solves
    start where each example's last visit ended; ``check_loss``: called with the loss before
    ``backward`` (the trainer stops a diverging run there)."""
    if tune:
        model.layer.alpha = share(tune_alpha(model, x, config.max_alpha))
    model.train()
    lr, beta1 = learning_rate(config, epoch, progress)
    apply_learning_rate(optimizer, lr, beta1)
    optimizer.zero_grad(set_to_none=True)
    reuse = store.select(examples) if store is not None else contextlib.nullcontext()
    tolerance = _scheduled_tolerance(model.layer, config, lr) if config.tol_peak is not None else contextlib.nullcontext()
    with reuse, tolerance:  # the solves start from the examples' last fixed points, to the step's tolerance
        logits = (forward or model)(x)
        loss = objective(logits, x, y, epoch)
        value = loss.item()
        if check_loss is not None:
            check_loss(value)
        loss.backward()
    optimizer.step()
    return value, logits
