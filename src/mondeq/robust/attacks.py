"""Projected gradient attacks: upper bounds on robust accuracy, against which certificates are checked."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["pgd_attack", "pgd_linf_attack"]


def pgd_attack(
    model: nn.Module, x: Tensor, labels: Tensor, eps: float | Tensor, steps: int = 20, step_size: float | None = None
) -> Tensor:
    """l2 projected gradient ascent on the cross-entropy, within ``||delta||_2 <= eps`` per example.

    ``eps`` may be a per-example tensor. Inputs are not clipped to an image range (the bound
    holds on all of input space, so the attack may use all of it).
    """
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0]).reshape(-1, *([1] * (x.dim() - 1)))
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


def pgd_linf_attack(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    eps: float | Tensor,
    steps: int = 20,
    step_size: float | Tensor | None = None,
    lower: float | Tensor | None = None,
    upper: float | Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """l-infinity projected gradient ascent (signed steps) on the cross-entropy, within
    ``|delta| <= eps`` elementwise (``eps`` broadcasts to ``x``: a per-channel radius in the model's
    input units), from a random start in the box; ``lower`` / ``upper`` bound the input (the image
    range in the model's units), when given."""
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    step = 2.5 * eps / steps if step_size is None else torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    delta = (torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) * 2 - 1) * eps
    was_training = model.training
    model.eval()

    def project(candidate: Tensor) -> Tensor:
        candidate = torch.maximum(torch.minimum(candidate, eps), -eps)
        if lower is not None or upper is not None:
            candidate = torch.clamp(x + candidate, min=lower, max=upper) - x
        return candidate

    delta = project(delta)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = project(delta + step * grad.sign())
    model.train(was_training)
    return (x + delta).detach()
