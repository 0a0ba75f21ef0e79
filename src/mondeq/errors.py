"""Exceptions and warnings raised by mondeq, and a filter for the expected ones."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "CheckpointError",
    "CompileWarning",
    "ConfigError",
    "ConfigTypeError",
    "DataError",
    "ConvergenceError",
    "ConvergenceWarning",
    "DivergenceError",
    "DoubleBackwardError",
    "MondeqError",
    "OutputError",
    "StepSizeWarning",
    "TrainingInterrupted",
    "first_line",
    "ignore_convergence_warnings",
]


class MondeqError(Exception):
    """Base of the errors that answer what a user asked for: options, files, data, solves.

    The ``mondeq`` command turns exactly these into one-line messages (exit code 2); anything
    else is a bug and keeps its traceback. Each subclass also derives from the built-in
    exception it refines, so ``except ValueError`` and the like keep working.
    """


class ConfigError(MondeqError, ValueError):
    """An option or argument has a value that cannot work (named in the message)."""


class ConfigTypeError(ConfigError, TypeError):
    """An option or argument has a value of the wrong type (named in the message)."""


class CheckpointError(MondeqError, RuntimeError):
    """A checkpoint is missing, corrupt or inconsistent."""


class DataError(MondeqError, RuntimeError):
    """A data file is missing, truncated or not in the expected format."""


class OutputError(MondeqError, OSError):
    """A run folder or output file cannot be written safely."""


class TrainingInterrupted(Exception):
    """Training stopped between two batches on SIGINT or SIGTERM; the checkpoint holds the position.

    Attributes:
        signal: the signal number that asked for the stop.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signal = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class ConvergenceWarning(RuntimeWarning):
    """A splitting solver stopped before reaching its tolerance."""


class StepSizeWarning(UserWarning):
    """Forward-backward's step size exceeded its convergence bound :math:`2m/L^2` and was replaced by :math:`m/L^2`."""


class CompileWarning(RuntimeWarning):
    """:func:`torch.compile` failed for the splitting iteration, which runs eagerly instead (same results)."""


class ConvergenceError(MondeqError, RuntimeError):
    """A splitting solver failed to converge and the layer is in strict mode."""


class DivergenceError(MondeqError, FloatingPointError):
    """Training diverged: a non-finite loss or parameter, or (in strict mode) a solver stuck at
    its iteration cap. The run stops without saving, so its last checkpoint stays the last good one."""


class DoubleBackwardError(MondeqError, RuntimeError):
    """A second-order gradient (``create_graph=True``) was requested through a monDEQ layer.

    The implicit backward pass is itself an equilibrium solve run without an autograd tape,
    so it has no derivative of its own; differentiating it would silently give wrong values.
    """


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def ignore_convergence_warnings() -> Iterator[None]:
    """Silence :class:`ConvergenceWarning`, and nothing else, inside the block.

    For solves meant to stop at ``max_iter`` (fixed iteration counts, timing, convergence traces).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield
