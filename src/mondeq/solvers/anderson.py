r"""Anderson acceleration of a fixed-point iteration."""

from __future__ import annotations

import torch
from torch import Tensor


class Anderson:
    r"""Type-II Anderson acceleration over the last ``memory`` iterates, per sample.

    With :math:`g_i = T(u_i) - u_i`, solves
    :math:`\min_\beta \|\sum_i \beta_i g_i\|^2 + \lambda \|\beta\|^2` s.t. :math:`\sum_i \beta_i = 1`
    and returns :math:`\sum_i \beta_i T(u_i)`. A stateful callable ``(u, T(u)) -> u_next``; make a
    new one per solve.
    """

    def __init__(self, memory: int = 5, regularization: float = 1e-6) -> None:
        if memory < 1:
            raise ValueError(f"Anderson memory must be >= 1, got {memory}")
        self.memory = memory
        self.regularization = regularization
        self._states: list[Tensor] = []
        self._mapped: list[Tensor] = []

    def __call__(self, state: Tensor, mapped: Tensor) -> Tensor:
        self._states.append(state)
        self._mapped.append(mapped)
        if len(self._states) > self.memory:
            self._states.pop(0)
            self._mapped.pop(0)
        if len(self._states) == 1:
            return mapped
        mapped_stack = torch.stack(self._mapped, dim=1).flatten(2)  # (batch, k, n)
        g = mapped_stack - torch.stack(self._states, dim=1).flatten(2)
        gram = g @ g.transpose(1, 2)
        k = gram.shape[-1]
        eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1, keepdim=True)[..., None]
        gram = gram + (self.regularization * scale + torch.finfo(gram.dtype).tiny) * eye
        ones = torch.ones(*gram.shape[:-1], 1, dtype=gram.dtype, device=gram.device)
        weights = torch.linalg.solve(gram, ones)
        weights = weights / weights.sum(dim=1, keepdim=True)
        return (weights.transpose(1, 2) @ mapped_stack).reshape(mapped.shape)
