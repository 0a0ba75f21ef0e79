"""The registry of splitting methods by name."""

from __future__ import annotations

from .base import SplittingMethod
from .douglas_rachford import DouglasRachford
from .forward_backward import ForwardBackward
from .peaceman_rachford import PeacemanRachford

__all__ = ["ALIASES", "SOLVERS", "get_solver"]

SOLVERS: dict[str, type[SplittingMethod]] = {
    "fb": ForwardBackward,
    "pr": PeacemanRachford,
    "dr": DouglasRachford,
}
ALIASES = {"forward-backward": "fb", "peaceman-rachford": "pr", "douglas-rachford": "dr"}


def get_solver(name: str | SplittingMethod) -> SplittingMethod:
    """A splitting method from its name (``"fb"``, ``"pr"``, ``"dr"`` or the long names)."""
    if isinstance(name, SplittingMethod):
        return name
    if isinstance(name, str):
        key = ALIASES.get(name.lower(), name.lower())
        if key in SOLVERS:
            return SOLVERS[key]()
    raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS) + sorted(ALIASES)}")
