"""Test-set evaluation: loss, accuracy and the solver's iterations, summed over the ranks of a run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..data import Batches, ImageDataset

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        loss: mean cross-entropy (no label smoothing).
        accuracy: fraction of correct predictions.
        forward_iterations: mean forward iterations per batch.
        seconds: wall time of the evaluation.
        examples: test examples.
    """

    loss: float
    accuracy: float
    forward_iterations: float
    seconds: float
    examples: int


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    batch_size: int,
    device: str | torch.device = "cpu",
    stop: Callable[[], bool] | None = None,
) -> EvalResult | None:
    """Loss, accuracy and mean forward iterations over ``dataset`` (summed across ranks).

    ``stop`` is asked between batches; when it answers true the evaluation is abandoned and
    ``None`` returned.
    """
    model.eval()
    start = time.perf_counter()
    totals = torch.zeros(4, dtype=torch.float64)  # loss, correct, iterations, batches
    shard = Batches(dataset, batch_size, rank=distributed.rank(), world_size=distributed.world_size(), pad=False, device=device)
    for x, y in shard:
        if stop is not None and stop():
            return None
        logits = model(x)
        totals += torch.tensor(
            [
                F.cross_entropy(logits, y, reduction="sum").item(),
                (logits.argmax(1) == y).sum().item(),
                model.layer.stats.forward.iterations,
                1,
            ],
            dtype=torch.float64,
        )
    totals = distributed.all_reduce_sum(totals)
    n = len(dataset)
    return EvalResult(
        loss=totals[0].item() / n,
        accuracy=totals[1].item() / n,
        forward_iterations=totals[2].item() / max(totals[3].item(), 1),
        seconds=time.perf_counter() - start,
        examples=n,
    )
