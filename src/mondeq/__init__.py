"""mondeq: monotone operator equilibrium networks (monDEQ) in PyTorch.

The names below load their modules (and torch) when first used, so that ``import mondeq.cli``
and ``mondeq --help`` stay quick.
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for type checkers and documentation tools
    from .activations import HardTanh, LeakyReLU, ProximalActivation, ReLU, Sigmoid, Softplus, Tanh, get_activation
    from .errors import (
        CompileWarning,
        ConfigError,
        ConvergenceError,
        ConvergenceWarning,
        DivergenceError,
        DoubleBackwardError,
        MondeqError,
        StepSizeWarning,
        ignore_convergence_warnings,
    )
    from .gradients import Implicit, JacobianFree, Phantom
    from .layer import MonDEQ
    from .operators import FullyConnected, KrylovStats, MonotoneOperator, MultiConv, OperatorFromMaps, Resolvent, SingleConv
    from .reuse import FixedPointStore
    from .solvers import Anderson, DouglasRachford, ForwardBackward, PeacemanRachford, SolverOptions, get_solver
    from .stats import SolveRecord, SolverStats

try:  # one source of truth: the version in pyproject.toml, as installed in the package metadata
    __version__ = _metadata.version("mondeq")
except _metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

#: Where each public name lives.
_MODULES = {
    "activations": ("HardTanh", "LeakyReLU", "ProximalActivation", "ReLU", "Sigmoid", "Softplus", "Tanh", "get_activation"),
    "errors": (
        "CompileWarning",
        "ConfigError",
        "ConvergenceError",
        "ConvergenceWarning",
        "DivergenceError",
        "DoubleBackwardError",
        "MondeqError",
        "StepSizeWarning",
        "ignore_convergence_warnings",
    ),
    "gradients": ("Implicit", "JacobianFree", "Phantom"),
    "layer": ("MonDEQ",),
    "operators": (
        "FullyConnected",
        "KrylovStats",
        "MonotoneOperator",
        "MultiConv",
        "OperatorFromMaps",
        "Resolvent",
        "SingleConv",
    ),
    "reuse": ("FixedPointStore",),
    "solvers": ("Anderson", "DouglasRachford", "ForwardBackward", "PeacemanRachford", "SolverOptions", "get_solver"),
    "stats": ("SolveRecord", "SolverStats"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "Anderson",
    "CompileWarning",
    "ConfigError",
    "ConvergenceError",
    "ConvergenceWarning",
    "DivergenceError",
    "DoubleBackwardError",
    "DouglasRachford",
    "FixedPointStore",
    "ForwardBackward",
    "FullyConnected",
    "HardTanh",
    "Implicit",
    "JacobianFree",
    "KrylovStats",
    "LeakyReLU",
    "MonDEQ",
    "MondeqError",
    "OperatorFromMaps",
    "MonotoneOperator",
    "MultiConv",
    "PeacemanRachford",
    "Phantom",
    "ProximalActivation",
    "ReLU",
    "Resolvent",
    "Sigmoid",
    "SingleConv",
    "Softplus",
    "SolveRecord",
    "SolverOptions",
    "SolverStats",
    "StepSizeWarning",
    "Tanh",
    "get_activation",
    "get_solver",
    "ignore_convergence_warnings",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mondeq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
