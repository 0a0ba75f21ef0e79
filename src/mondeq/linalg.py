"""Small linear-algebra helpers: the largest singular value (the solvers' step-size bound, the robustness
bounds) and batched restarted GMRES (the resolvent of operators built from your own maps)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["gmres", "largest_singular_value"]


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


def gmres(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor,
    tol: float,
    reduction: float = 0.0,
    restart: int = 20,
    max_iter: int = 200,
) -> tuple[Tensor, int, float]:
    r"""Solve :math:`Mx = b` for every row of ``b`` (``(N, n)``) by restarted GMRES with per-row Krylov spaces.

    Stops when every row's residual is below ``max(tol * ||b||, reduction * ||b - M x0||)``, after
    ``max_iter`` iterations, or when a restart cycle no longer reduces the residual (it has reached
    rounding level). Returns ``(x, iterations, largest relative residual)``.
    """
    if b.shape[0] == 0:
        return x0, 0, 0.0
    tiny, eps = torch.finfo(b.dtype).tiny, torch.finfo(b.dtype).eps
    b_norm = b.norm(dim=1).clamp_min(tiny)
    x = x0
    r = b - apply(x)
    beta = r.norm(dim=1)
    # never below the rounding error of applying M, which no iteration can remove; a warm start
    # worse than zero does not loosen the target beyond reduction * ||b||
    target = torch.maximum(max(tol, 64 * eps) * b_norm, reduction * torch.minimum(beta, b_norm))
    iterations, previous = 0, math.inf
    while iterations < max_iter:
        excess = float((beta / target).max())  # progress of the rows still above their target
        if excess <= 1 or excess >= 0.99 * previous:
            break
        previous = excess
        basis = [r / beta.clamp_min(tiny)[:, None]]
        hessenberg = b.new_zeros(b.shape[0], restart + 1, restart)
        for j in range(min(restart, max_iter - iterations)):
            w = apply(basis[j])
            for i, v in enumerate(basis):  # modified Gram-Schmidt, per row
                h = (w * v).sum(dim=1)
                hessenberg[:, i, j] = h
                w = w - h[:, None] * v
            norm = w.norm(dim=1)
            hessenberg[:, j + 1, j] = norm
            basis.append(w / norm.clamp_min(tiny)[:, None])
            iterations += 1
            h = hessenberg[:, : j + 2, : j + 1]
            e1 = b.new_zeros(b.shape[0], j + 2, 1)
            e1[:, 0, 0] = beta
            y = torch.linalg.pinv(h) @ e1  # rank-deficient for a row already solved: pinv, on every device
            if bool(((e1 - h @ y)[..., 0].norm(dim=1) <= target).all()):
                break
        x = x + torch.einsum("bk,kbn->bn", y[..., 0], torch.stack(basis[: y.shape[1]]))
        r = b - apply(x)
        beta = r.norm(dim=1)
    return x, iterations, float((beta / b_norm).max())
