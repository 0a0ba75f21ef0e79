r"""A function compiled with :func:`torch.compile` on first use, run eagerly where compiling fails.

The solver loop (:func:`~mondeq.solvers.base.solve`) compiles its unit of work, one splitting
iteration and the norms of its residual, with :class:`Compiled`. Eager, an iteration is a dozen tensor
operations, each a pass over the ``(batch, n)`` state and a dispatch through Python; small operators
(a fully connected layer of a hundred units) spend most of their time in those dispatches.
Compiled, the element-wise passes around the products and the resolvent fuse into a few kernels.

Compilation is a choice of the caller (``SolverOptions.compiled``), never a requirement: where
:func:`torch.compile` is missing or fails (no C++ compiler, an unsupported Python), the first call
warns once (:class:`~mondeq.errors.CompileWarning`) and every later call runs the function eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Generic, ParamSpec, TypeVar

import torch

from ..errors import CompileWarning

__all__ = ["Compiled"]

P = ParamSpec("P")
R = TypeVar("R")


class Compiled(Generic[P, R]):
    """``function`` under :func:`torch.compile` (static shapes), built on first use; ``function`` itself
    for good once compiling or running the compiled version fails. ``name`` says what failed in the warning."""

    def __init__(self, function: Callable[P, R], name: str) -> None:
        self.function = function
        self.name = name
        self._compiled: Callable[P, R] | None = None
        self.failed: str | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.failed is not None:
            return self.function(*args, **kwargs)
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self.function, dynamic=False)
            return self._compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure of the compiler falls back to the same math, eager
            message = str(error).splitlines()[0] if str(error) else ""
            self.failed = f"{type(error).__name__}: {message}"[:300]
            warning = f"torch.compile failed for {self.name}; running it eagerly ({self.failed})"
            warnings.warn(warning, CompileWarning, stacklevel=4)
            return self.function(*args, **kwargs)
