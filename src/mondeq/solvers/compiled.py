r"""One splitting iteration as the unit of work, eager or compiled with :func:`torch.compile`.

An iteration maps the state :math:`u_k` to :math:`(T(u_k), z_k, p_k)` with :math:`p_k = W z_k + b`
and measures the two norms of the residual, :math:`\|\sigma(p_k) - z_k\|` and :math:`\|\sigma(p_k)\|`.
Eager, that is a dozen tensor operations, each a pass over the ``(batch, n)`` state and a dispatch
through Python; small operators (a fully connected layer of a hundred units) spend most of their
time in those dispatches. Compiled, the element-wise passes around the products and the resolvent
fuse into a few kernels.

Compilation is a choice of the caller (``SolverOptions.compiled``), never a requirement: where
:func:`torch.compile` is missing or fails (no C++ compiler, an unsupported Python), the first call
warns once (:class:`~mondeq.errors.CompileWarning`) and every later iteration runs eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import CompileWarning

if TYPE_CHECKING:  # base.py's solve imports this module
    from .base import SplittingMethod, SplittingProblem

__all__ = ["Iteration", "iterate", "iteration"]

#: ``(method, problem, state) -> (T(u), z, pre, ||σ(pre) - z||, ||σ(pre)||)``
Iteration = Callable[["SplittingMethod", "SplittingProblem", Tensor], tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]


def iterate(method: SplittingMethod, problem: SplittingProblem, state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""One step of ``method`` from ``state`` and the norms of its estimate's residual:
    ``(T(u), z, pre, ||σ(pre) - z||, ||σ(pre)||)``, the norms as 0-dimensional tensors."""
    mapped, z, pre = method.step(problem, state)
    fixed = problem.activation(pre)
    return mapped, z, pre, torch.dist(fixed, z), torch.linalg.vector_norm(fixed)


class _Compiled:
    """:func:`iterate` under :func:`torch.compile`, built on first use; eager for good once compiling fails."""

    def __init__(self) -> None:
        self._function: Iteration | None = None
        self.failed: str | None = None

    def __call__(self, method: SplittingMethod, problem: SplittingProblem, state: Tensor):
        if self.failed is not None:
            return iterate(method, problem, state)
        try:
            if self._function is None:
                self._function = torch.compile(iterate, dynamic=False)
            return self._function(method, problem, state)
        except Exception as error:  # noqa: BLE001 - any failure of the compiler falls back to the same math, eager
            self.failed = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
            warnings.warn(
                f"torch.compile failed for the splitting iteration; running it eagerly ({self.failed})",
                CompileWarning,
                stacklevel=4,
            )
            return iterate(method, problem, state)


_COMPILED = _Compiled()


def iteration(compiled: bool) -> Iteration:
    """The iteration a solve runs: :func:`iterate`, or the process's one compiled version of it."""
    return _COMPILED if compiled else iterate
