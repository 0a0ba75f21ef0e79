"""Small linear-algebra helpers shared by the solvers' step-size bound and the robustness bounds."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["largest_singular_value"]


@torch.no_grad()
def largest_singular_value(gram: Callable[[Tensor], Tensor], start: Tensor, iterations: int = 200, tol: float = 1e-7) -> float:
    r""":math:`\sigma_{max}(A)` by power iteration on :math:`v \mapsto A^\top A v` (``gram``), from ``start``.

    Stops when the estimate changes by less than ``tol`` (relative). Power iteration approaches
    :math:`\sigma_{max}` from below.
    """
    v = start / start.norm()
    sigma = 0.0
    for _ in range(iterations):
        w = gram(v)
        norm = w.norm().item()
        if norm == 0:
            return 0.0
        v = w / norm
        previous, sigma = sigma, norm**0.5
        if abs(sigma - previous) <= tol * sigma:
            break
    return sigma
