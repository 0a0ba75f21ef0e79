"""The registry of splitting methods by name.

Every :class:`~mondeq.solvers.base.SplittingMethod` subclass with a ``name``, defined in a module
of this package, is registered: adding a method is adding its module.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from .base import SplittingMethod

__all__ = ["ALIASES", "SOLVERS", "get_solver"]


def _discover() -> dict[str, type[SplittingMethod]]:
    found = {}
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        for value in vars(importlib.import_module(f"{__package__}.{module.name}")).values():
            if isinstance(value, type) and issubclass(value, SplittingMethod) and value.name:
                found[value.name] = value
    return dict(sorted(found.items()))


SOLVERS: dict[str, type[SplittingMethod]] = _discover()
ALIASES = {method.long_name: name for name, method in SOLVERS.items() if method.long_name}


def get_solver(name: str | SplittingMethod) -> SplittingMethod:
    """A splitting method from its name (``"fb"``, ``"pr"``, ``"dr"`` or the long names)."""
    if isinstance(name, SplittingMethod):
        return name
    if isinstance(name, str):
        key = ALIASES.get(name.lower(), name.lower())
        if key in SOLVERS:
            return SOLVERS[key]()
    raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS) + sorted(ALIASES)}")
