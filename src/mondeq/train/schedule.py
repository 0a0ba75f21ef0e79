"""What each training step uses: the optimiser, the learning-rate schedule, and the splitting step size.

Adam (AdamW with a weight decay of the weights and kernels) with the paper's schedules: step decay,
or one-cycle with the inverse momentum cycle; and the paper's step-size search (:func:`tune_alpha`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .config import TrainConfig

__all__ = ["apply_learning_rate", "learning_rate", "make_optimizer", "tune_alpha"]


def learning_rate(config: TrainConfig, t: float, progress: float | None = None) -> tuple[float, float | None]:
    """``(lr, beta1)`` at fractional epoch ``t``; ``beta1`` is ``None`` unless one-cycle.

    One-cycle (as in the paper's CIFAR runs): lr rises linearly from ``lr/10`` to ``lr`` over the
    first half of the cycle, falls back over the second, then decays linearly to ``lr/100``; Adam's
    ``beta1`` moves inversely between 0.95 and 0.85. ``progress`` is the fraction of the run
    done (default ``t / epochs``; the fraction of the time budget for a budgeted run). The cycle
    spans ``epochs - 5`` epochs for long runs and 80% of the run for short and budgeted ones.
    """
    if config.lr_schedule == "constant":
        return config.lr, None
    if config.lr_schedule == "step":
        return config.lr * 0.1 ** math.floor(t / config.lr_step), None
    total = config.epochs
    progress = t / total if progress is None else progress
    cycle = (total - 5) / total if total > 10 and config.time_budget is None else 0.8
    points = [0.0, cycle / 2, cycle, 1.0]
    low = config.lr / 10
    lr = float(np.interp(progress, points, [low, config.lr, low, low / 10]))
    beta1 = float(np.interp(progress, points, [0.95, 0.85, 0.95, 0.95]))
    return lr, beta1


def apply_learning_rate(optimizer: torch.optim.Optimizer, lr: float, beta1: float | None) -> None:
    """Set every parameter group's learning rate (and Adam's ``beta1`` when given)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if beta1 is not None:
            group["betas"] = (beta1, group["betas"][1])


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam at ``config.lr``; with ``config.weight_decay`` the decoupled decay (AdamW) of the
    tensors of two or more dimensions (weights and kernels), in a group of their own."""
    if not config.weight_decay:
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    decayed = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=config.lr, decoupled_weight_decay=True)


def tunes_alpha(config: TrainConfig, index: int, num_batches: int) -> bool:
    """Whether the step size is tuned before batch ``index`` of an epoch of ``num_batches``: at batch 30
    and half-way through every epoch (the paper's schedule), unless ``config.tune_alpha`` is off."""
    return config.tune_alpha and index in (30, num_batches // 2)


@torch.no_grad()
def tune_alpha(model: nn.Module, x: torch.Tensor, max_alpha: float) -> float:
    """Pick the step size with the fewest forward iterations on batch ``x`` (the paper's search).

    Tries ``max_alpha, max_alpha/2, ...`` until the iteration count grows; keeps the current alpha
    if none converged. Forward-backward keeps its own bound and is not tuned. The model runs in
    evaluation mode (a user model's batch norm statistics and dropout stay untouched), from cold
    starts (no fixed-point reuse: it would hide the differences between step sizes).
    """
    layer = model.layer
    if not layer.forward_options.splitting.needs_resolvent:
        return layer.alpha
    original, training = layer.alpha, model.training
    best_alpha, best_iters = original, math.inf
    alpha, previous = max_alpha, math.inf
    model.eval()
    try:
        while alpha > 1e-4:
            layer.alpha = alpha
            model(x)
            stats = layer.stats
            iters = stats.forward.iterations if stats.forward.converged else math.inf
            if iters < best_iters:
                best_alpha, best_iters = alpha, iters
            if iters > previous:
                break
            previous = iters
            alpha /= 2
    finally:
        model.train(training)
    layer.alpha = best_alpha if best_iters < math.inf else original
    return layer.alpha
