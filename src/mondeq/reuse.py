r"""Fixed-point reuse: the equilibrium an example reached on its last visit starts its next solve.

The same training examples come back every epoch while the weights move little between two
visits, so the pre-activation :math:`p = W z^\star + Ux + b` that an example reached last time
is close to the one it reaches now. A solve started there (:meth:`SplittingMethod.warm_state
<mondeq.solvers.SplittingMethod.warm_state>`) needs fewer iterations, and the monotone guarantee
makes the answer independent of the start: a warm solve returns the cold solve's equilibrium to
the tolerance. The implicit backward solve's pre-activation :math:`W^\top w + g` is kept the same
way and starts the next backward solve.

Rows are stored in bfloat16 (a starting point needs no more than its three significant digits),
on the model's device, within a memory cap: examples beyond it start cold every time.

Example::

    store = FixedPointStore(len(train_set), layer.linear.features)
    layer.fixed_points = store
    for index, (x, y) in enumerate(batches):
        with store.select(batches.indices(index)):  # this forward and its backward
            loss_fn(model(x), y).backward()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .solvers.base import WarmStart
from .validation import POSITIVE_INT

__all__ = ["DIRECTIONS", "INTERVAL", "FixedPointStore"]

#: What can be reused: the equilibrium solve's pre-activation, the implicit backward solve's, and the
#: bounds of certified training's interval iteration (:class:`~mondeq.robust.CertifiedObjective`).
DIRECTIONS = ("forward", "backward", "interval_lower", "interval_upper")
#: The directions of the interval iteration's box.
INTERVAL = DIRECTIONS[2:]


class FixedPointStore:
    r"""Per-example pre-activations from the last solve of each training example.

    Args:
        examples: size of the training set (example indices run over ``0 .. examples - 1``).
        features: hidden units per example, :math:`n`.
        directions: what is kept, a non-empty subset of :data:`DIRECTIONS` (default: the equilibrium
            solve's and the implicit backward solve's pre-activations).
        max_bytes: memory cap; the first ``max_bytes // (bytes per example)`` examples get rows,
            the others always start cold (``None``: every example).
        dtype: storage type of the rows.
        device: where the rows live (the model's device: no copies between devices per step).

    Attributes:
        capacity: how many examples (the first ones) have rows.
        directions: what is kept, in the order of :data:`DIRECTIONS`.
    """

    def __init__(
        self,
        examples: int,
        features: int,
        directions: tuple[str, ...] = DIRECTIONS[:2],
        max_bytes: int | None = None,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
    ) -> None:
        self.examples, self.features = POSITIVE_INT.check("examples", examples), POSITIVE_INT.check("features", features)
        unknown = set(directions) - set(DIRECTIONS)
        if unknown or not directions:
            raise ValueError(f"directions must be a non-empty subset of {DIRECTIONS}, got {directions!r}")
        self.directions = tuple(d for d in DIRECTIONS if d in directions)
        per_example = features * torch.finfo(dtype).bits // 8 * len(self.directions)
        self.capacity = self.examples if max_bytes is None else min(self.examples, int(max_bytes) // per_example)
        self.rows = {d: torch.zeros(self.capacity, features, dtype=dtype, device=device) for d in self.directions}
        self.visited = {d: torch.zeros(self.capacity, dtype=torch.bool, device=device) for d in self.directions}
        self._active: _Selection | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the rows and their masks."""
        return sum(t.numel() * t.element_size() for t in (*self.rows.values(), *self.visited.values()))

    def describe(self) -> str:
        """One line for a log: what is kept, for how many examples, in how much memory."""
        kept = " and ".join(d.replace("_", " ") for d in self.directions)
        covered = (
            "every example" if self.capacity == self.examples else f"{self.capacity:,} of {self.examples:,} examples (memory cap)"
        )
        dtype = str(next(iter(self.rows.values())).dtype).removeprefix("torch.")
        return f"fixed-point reuse ({kept}): {covered}, {self.features:,} values each in {dtype}, {self.nbytes / 1e9:.2f} GB"

    @contextmanager
    def select(self, indices: Tensor) -> Iterator[None]:
        """Within the block, a :class:`~mondeq.MonDEQ` holding this store starts the solves of a
        training batch (grad mode on) from the rows of the examples ``indices`` ``(batch,)``, and
        keeps what they reach."""
        self._active = _Selection(self, indices)
        try:
            yield
        finally:
            self._active = None

    def active(self) -> _Selection | None:
        """The selection of the current training batch, or ``None`` outside :meth:`select`."""
        return self._active

    def clear(self) -> None:
        """Forget every row: the next visits start cold."""
        for mask in self.visited.values():
            mask.zero_()

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return {
            **{f"{d}.rows": self.rows[d] for d in self.directions},
            **{f"{d}.visited": self.visited[d] for d in self.directions},
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Rows from :meth:`state_dict` of a store of the same shape; ``ValueError`` otherwise."""
        expected = self.state_dict()
        if set(state) != set(expected) or any(
            state[k].shape != v.shape or state[k].dtype != v.dtype for k, v in expected.items()
        ):
            raise ValueError("the stored fixed points do not match this store's shape")
        for key, value in state.items():
            expected[key].copy_(value)


class _Selection:
    """The rows of one training batch: looked up before a solve, written after it."""

    def __init__(self, store: FixedPointStore, indices: Tensor) -> None:
        self.store = store
        device = next(iter(store.rows.values())).device
        indices = indices.to(device=device, dtype=torch.long)
        self.stored = indices < store.capacity  # (batch,) which examples have rows
        self.index = indices[self.stored]

    def start(self, direction: str, like: Tensor) -> WarmStart | None:
        """The stored pre-activations ``(batch, n)`` as ``like``'s dtype and device (zeros in the rows
        that have none) and the rows that have one, or ``None`` when no example is warm."""
        if direction not in self.store.rows or like.shape[0] != self.stored.shape[0]:
            return None
        warm = torch.zeros_like(self.stored)
        warm[self.stored] = self.store.visited[direction][self.index]
        if not bool(warm.any()):
            return None
        pre = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
        pre[self.stored.to(like.device)] = self.store.rows[direction][self.index].to(like)
        return WarmStart(pre, warm.to(like.device))

    def keep(self, direction: str, pre: Tensor) -> None:
        """Store the pre-activations ``(batch, n)`` that the solve reached."""
        if direction not in self.store.rows or pre.shape[0] != self.stored.shape[0]:
            return
        rows = pre.detach()[self.stored.to(pre.device)]
        self.store.rows[direction][self.index] = rows.to(self.store.rows[direction])
        self.store.visited[direction][self.index] = True
