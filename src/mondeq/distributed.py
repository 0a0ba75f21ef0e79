"""Thin helpers over ``torch.distributed`` that are no-ops in a single process.

``mondeq train`` under ``torchrun`` initialises the process group from the environment
(gloo on CPU, nccl on CUDA); every helper here then acts across ranks.
"""

from __future__ import annotations

import gc
import math
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .errors import DivergenceError

__all__ = [
    "all_reduce_sum",
    "any_rank",
    "broadcast_float",
    "check_finite",
    "init_from_environment",
    "is_main",
    "leave_after_failure",
    "lost_contact",
    "rank",
    "shutdown",
    "world_size",
    "wrap",
]


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_environment(device: str) -> str:
    """Join the process group when launched by ``torchrun``; returns the device to use."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1 or is_initialized():
        return device
    cuda = device.startswith("cuda")
    timeout = timedelta(seconds=float(os.environ.get("MONDEQ_DIST_TIMEOUT", 600)))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def shutdown(synchronize: bool = True) -> None:
    """Leave the process group (a no-op in one process).

    The model's DistributedDataParallel wrapper may still be alive in a reference cycle (the
    operators cache closures over themselves); collecting it first and meeting the other ranks
    at a barrier keeps gloo from tearing down a group a reducer or a peer still uses, which
    intermittently aborted successful runs ("terminate called without an active exception").
    """
    if not is_initialized():
        return
    gc.collect()
    if synchronize:
        dist.barrier()
    dist.destroy_process_group()


#: Seconds a rank that lost contact with a peer waits before leaving, so that torchrun sees the
#: peer's failure first and names it as the root cause.
LOST_CONTACT_GRACE = 3.0

_LOST_CONTACT = ("connection reset", "connection closed", "broken pipe", "connection refused", "socket closed", "timed out")


def lost_contact(error: BaseException) -> str | None:
    """Why ``error`` means a collective lost its connection to another rank (e.g. ``"connection reset"``), else ``None``."""
    text = str(error).lower()
    for reason in _LOST_CONTACT:
        if reason in text and isinstance(error, RuntimeError):
            return reason
    backend_errors = tuple(getattr(dist, name) for name in ("DistBackendError", "DistNetworkError") if hasattr(dist, name))
    return "backend error" if isinstance(error, backend_errors) else None


def leave_after_failure(error: BaseException, program: str = "mondeq train") -> None:
    """Name this rank's failure on stderr and end the process at once (exit code 1), so that torchrun
    stops the other ranks instead of letting them wait in a collective. A lost connection means
    another rank died first: say so, and leave a moment later, so that torchrun's summary names
    that rank as the root cause."""
    import sys
    import time

    reason = lost_contact(error)
    if reason:
        print(
            f"{program}: rank {rank()} lost contact with another rank ({reason}); "
            "that rank stopped first: see torchrun's summary for its cause",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(LOST_CONTACT_GRACE)
    else:
        print(f"{program}: rank {rank()} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    os._exit(1)


def wrap(model: nn.Module) -> nn.Module:
    """``DistributedDataParallel(model)`` when running distributed, else ``model``."""
    if world_size() <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if world_size() <= 1:
        return tensor
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    reduced = tensor.to(device)
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


def broadcast_float(value: float) -> float:
    """Rank 0's ``value`` on every rank."""
    if world_size() <= 1:
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.item()


def check_finite(value: float, what: str) -> None:
    """Raise :class:`~mondeq.errors.DivergenceError` on every rank if ``value`` is non-finite on any
    rank, so that no rank hangs; ``what`` names the value and where it was seen."""
    bad = all_reduce_sum(torch.tensor([0.0 if math.isfinite(value) else 1.0], dtype=torch.float64)).item()
    if bad > 0:
        ranks = f" on {int(bad)} of {world_size()} ranks" if world_size() > 1 else ""
        raise DivergenceError(f"training diverged: {what} is not finite{ranks}")


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if world_size() <= 1:
        return flag
    return all_reduce_sum(torch.tensor([float(flag)], dtype=torch.float64)).item() > 0
