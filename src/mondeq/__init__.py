"""mondeq: monotone operator equilibrium networks (monDEQ) in PyTorch."""

from importlib import metadata as _metadata

from .activations import (
    HardTanh,
    LeakyReLU,
    ProximalActivation,
    ReLU,
    Sigmoid,
    Softplus,
    Tanh,
    get_activation,
)
from .errors import (
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
from .operators import FullyConnected, KrylovStats, Monotone, MonotoneOperator, MultiConv, Resolvent, SingleConv
from .reuse import FixedPointStore
from .solvers import Anderson, DouglasRachford, ForwardBackward, PeacemanRachford, SolverOptions, get_solver
from .stats import SolveRecord, SolverStats

try:  # one source of truth: the version in pyproject.toml, as installed in the package metadata
    __version__ = _metadata.version("mondeq")
except _metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Anderson",
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
    "Monotone",
    "MonotoneOperator",
    "MultiConv",
    "PeacemanRachford",
    "Phantom",
    "ProximalActivation",
    "ReLU",
    "Resolvent",
    "Sigmoid",
    "SingleConv",
    "SolveRecord",
    "SolverOptions",
    "SolverStats",
    "Softplus",
    "StepSizeWarning",
    "Tanh",
    "get_activation",
    "get_solver",
    "ignore_convergence_warnings",
]
