"""Where and how a command runs: the device (``cpu``, ``cuda`` or ``cuda:N``, checked before any
work starts) and the memory allocator's settings."""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["resolve_device", "tune_allocator"]


def resolve_device(name: str | torch.device) -> torch.device:
    """``torch.device(name)``, with a one-line :class:`~mondeq.errors.ConfigError` for unknown or unavailable devices."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but no CUDA GPU is available (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    elif device.index not in (None, 0):
        raise ConfigError(f"device {name!r}: there is one CPU device, cpu (its threads: --threads)")
    return device


def tune_allocator() -> None:
    """Keep freed solver buffers (tens of MB each) in the heap instead of returning them to the
    OS after every iteration: glibc's default mmap threshold makes each one a fresh, page-faulting
    mapping, which costs about 13% of a single-conv training step on 2 cores. Applied by every
    entry point (the ``mondeq`` command, the benchmarks) so they measure alike."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass
