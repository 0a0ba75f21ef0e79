"""The paper's monDEQ image classifiers and their named presets.

Each classifier is a :class:`~mondeq.MonDEQ` layer followed by a readout:

- ``fc``: fully connected operator on the flattened image, linear readout.
- ``single-conv``: single convolution, 4x4 average pooling, linear readout.
- ``multi-conv``: multi-tier convolution, linear readout of the coarsest tier (``readout="all"``:
  of every tier, average-pooled to the coarsest tier's size).

Any other architecture enters through an entry point ``"package.module:function"``
(:class:`EntryPointConfig`): the function builds the user's ``nn.Module`` with a
:class:`~mondeq.MonDEQ` layer inside, and :class:`EntryPointModel` gives the trainer and the
``mondeq`` commands what they need of it.

Sizes follow the paper (Winston & Kolter 2020, and its public experiments) per data set;
every size is overridable. All presets use ``m = 1``, Peaceman-Rachford, ``tol = 1e-2``.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .activations import ACTIVATIONS
from .checkpoint import CheckpointError, load_checkpoint, require
from .devices import resolve_device
from .errors import ConfigError, first_line
from .gradients import GRADIENTS, get_gradient
from .layer import MonDEQ
from .operators import FullyConnected, MonotoneOperator, MultiConv, SingleConv
from .solvers import SOLVERS

__all__ = [
    "KINDS",
    "MODEL_KINDS",
    "ClassifierKind",
    "EntryPointConfig",
    "EntryPointModel",
    "ModelConfig",
    "MonDEQClassifier",
    "SpectralBound",
    "build_model",
    "equilibrium_input",
    "is_entry_point",
    "load_model",
    "model_config_from_dict",
    "model_label",
    "model_options",
    "option_applies",
    "pool_tiers",
    "preset_config",
]


def _option(help: str, value: str, **argparse: Any) -> dict[str, Any]:
    """Field metadata of a model option: its help, the kind of value (``positive``, ``positive_int``,
    ``count``, or ``choice``, whose ``choices`` come from a registry), and extra argparse settings."""
    return {"help": help, "value": value, **argparse}


#: What multi-conv's readout sees: the coarsest tier, or every tier average-pooled to its size.
READOUTS = ("last", "all")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a classifier (stored in checkpoints as JSON).

    ``kind`` and the data set's shape (``in_channels``, ``image_size``, ``num_classes``) are fixed
    by the run; every field with option metadata is a ``mondeq train`` flag of the same name.
    """

    kind: str
    in_channels: int
    image_size: int
    num_classes: int
    width: int = field(default=87, metadata=_option("hidden units of the fc model", "positive_int"))
    channels: list[int] = field(
        default_factory=lambda: [54], metadata=_option("channels (one per tier for multi-conv)", "positive_int", nargs="+")
    )
    kernel_size: int = field(
        default=3, metadata=_option("odd kernel size of the conv models' convolutions (preset 3)", "positive_int")
    )
    pool: int = field(default=4, metadata=_option("average pooling of the single-conv readout (preset 4)", "positive_int"))
    stride: int = field(
        default=1, metadata=_option("stride of the conv models' input injection: 2 halves the equilibrium's side", "positive_int")
    )
    readout: str = field(
        default="last",
        metadata=_option(
            "multi-conv's readout: the coarsest tier (preset last) or all tiers pooled to its size", "choice", choices=READOUTS
        ),
    )
    m: float = field(default=1.0, metadata=_option("monotonicity margin m > 0 (preset 1.0)", "positive"))
    activation: str = field(default="relu", metadata=_option("proximal activation (preset relu)", "choice", choices=ACTIVATIONS))
    solver: str = field(default="pr", metadata=_option("splitting method (preset pr)", "choice", choices=SOLVERS))
    alpha: float = field(default=1.0, metadata=_option("splitting step size (preset 1.0, then tuned)", "positive"))
    tol: float = field(default=1e-2, metadata=_option("relative residual tolerance (preset 1e-2)", "positive"))
    max_iter: int = field(default=300, metadata=_option("solver iteration cap (preset 300)", "positive_int"))
    anderson: int = field(default=0, metadata=_option("Anderson acceleration memory (0: off)", "count"))
    gradient: str = field(
        default="implicit",
        metadata=_option(
            "how gradients are computed: implicit (exact, a backward solve), phantom (damped unrolled steps), "
            "jacobian-free (one step, no backward solve)",
            "choice",
            choices=GRADIENTS,
        ),
    )
    phantom_steps: int = field(default=5, metadata=_option("unrolled steps of --gradient phantom (default 5)", "positive_int"))
    phantom_damping: float = field(
        default=0.5, metadata=_option("damping of --gradient phantom's steps, in (0, 1] (default 0.5)", "positive")
    )
    #: Spectral bound on the input injection U (None: unconstrained); see :class:`SpectralBound`.
    input_norm: float | None = field(
        default=None,
        metadata=_option(
            "keep ||U|| <= C (spectral normalisation); with a large --m it lowers the bound ||R|| ||U|| / m",
            "positive",
            metavar="C",
        ),
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown model {self.kind!r}; choose one of {list(KINDS)}")
        for option in model_options():
            check_option(option, getattr(self, option.name))
        phantom = {"steps": self.phantom_steps, "damping": self.phantom_damping}
        if self.gradient != "phantom" and phantom != {"steps": 5, "damping": 0.5}:
            raise ConfigError(f"phantom_steps and phantom_damping set --gradient phantom; the gradient is {self.gradient!r}")
        try:
            self.adjoint()
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def adjoint(self):
        """The :class:`~mondeq.gradients.Adjoint` that :attr:`gradient` (and the phantom settings) name."""
        phantom = {"steps": self.phantom_steps, "damping": self.phantom_damping}
        return get_gradient(self.gradient, **(phantom if self.gradient == "phantom" else {}))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


def model_options() -> list:
    """The fields of :class:`ModelConfig` that a user may set (each a ``mondeq train`` flag)."""
    return [f for f in fields(ModelConfig) if "help" in f.metadata]


def check_option(option, value: Any) -> None:
    """``ValueError`` naming ``option`` unless ``value`` (``None``: unset) fits its kind of value."""
    if value is None or option.metadata["value"] == "choice":
        if value is not None and value not in option.metadata["choices"]:
            raise ConfigError(f"{option.name} must be one of {sorted(option.metadata['choices'])}, got {value!r}")
        return
    values = value if option.metadata.get("nargs") else [value]
    if option.metadata.get("nargs") and not values:
        raise ConfigError(f"{option.name} must list at least one value")
    integer = option.metadata["value"] in ("positive_int", "count")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{option.name} must be a finite {'integer' if integer else 'number'}, got {v!r}")
        low = {"positive_int": 1, "count": 0}.get(option.metadata["value"])
        if (low is None and not v > 0) or (low is not None and v < low):
            raise ConfigError(f"{option.name} must be {'> 0' if low is None else f'>= {low}'}, got {v!r}")


@dataclass(frozen=True)
class ClassifierKind:
    """A model kind: its monotone operator, how the equilibrium is pooled for the readout, and the
    paper's hidden size per data set (``width`` for fc, ``channels`` otherwise)."""

    operator: Callable[[ModelConfig], MonotoneOperator]
    pool: Callable[[ModelConfig, Tensor | tuple[Tensor, ...]], Tensor]
    sizes: dict[str, int | tuple[int, ...]]


KINDS: dict[str, ClassifierKind] = {
    "fc": ClassifierKind(
        operator=lambda c: FullyConnected(c.in_channels * c.image_size**2, c.width, m=c.m),
        pool=lambda c, z: z,
        sizes={"mnist": 87, "fashion-mnist": 87, "cifar10": 200, "svhn": 200},
    ),
    "single-conv": ClassifierKind(
        operator=lambda c: SingleConv(
            c.in_channels, c.channels[0], c.image_size, kernel_size=c.kernel_size, m=c.m, stride=c.stride
        ),
        pool=lambda c, z: F.avg_pool2d(z, c.pool),
        sizes={"mnist": 54, "fashion-mnist": 54, "cifar10": 81, "svhn": 81},
    ),
    "multi-conv": ClassifierKind(
        operator=lambda c: MultiConv(
            c.in_channels, tuple(c.channels), c.image_size, kernel_size=c.kernel_size, m=c.m, stride=c.stride
        ),
        pool=lambda c, z: pool_tiers(z, c.readout),
        sizes={"mnist": (16, 32, 32), "fashion-mnist": (16, 32, 32), "cifar10": (16, 32, 60), "svhn": (16, 32, 60)},
    ),
}
MODEL_KINDS = tuple(KINDS)


def pool_tiers(tiers: tuple[Tensor, ...], readout: str) -> Tensor:
    r"""Multi-conv's readout input: the coarsest tier :math:`(N, c_L, s_L, s_L)` (``"last"``), or every
    tier :math:`i` average-pooled by :math:`2^{L-i}` to that size and stacked along the channels,
    :math:`(N, \sum_i c_i, s_L, s_L)` (``"all"``)."""
    if readout == "last":
        return tiers[-1]
    last = len(tiers) - 1
    return torch.cat([F.avg_pool2d(t, 2 ** (last - i)) if i < last else t for i, t in enumerate(tiers)], dim=1)


#: Options that only some model kinds use (the kinds, and how an error names them): refused with
#: any other kind unless left at their default.
_KIND_SPECIFIC_OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "width": (("fc",), "fc"),
    "channels": (("single-conv", "multi-conv"), "the convolutional models"),
    "stride": (("single-conv", "multi-conv"), "the convolutional models"),
    "kernel_size": (("single-conv", "multi-conv"), "the convolutional models"),
    "pool": (("single-conv",), "single-conv"),
    "readout": (("multi-conv",), "multi-conv"),
}


def option_applies(name: str, kind: str) -> bool:
    """Whether model option ``name`` means anything for the preset ``kind``."""
    return kind in _KIND_SPECIFIC_OPTIONS.get(name, (KINDS, ""))[0]


def preset_config(kind: str, dataset: str, in_channels: int, image_size: int, num_classes: int, **overrides) -> ModelConfig:
    """The paper's configuration of ``kind`` for ``dataset``, with ``overrides`` (``None`` ignored)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown model {kind!r}; choose one of {list(KINDS)}")
    size = KINDS[kind].sizes.get(dataset, KINDS[kind].sizes["mnist"])
    sized = {"width": size} if kind == "fc" else {"channels": [size] if isinstance(size, int) else list(size)}
    known = {f.name for f in fields(ModelConfig)}
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown model option {key!r}")
    given = {k: (list(v) if k == "channels" else v) for k, v in overrides.items() if v is not None}
    config = ModelConfig(kind=kind, in_channels=in_channels, image_size=image_size, num_classes=num_classes, **{**sized, **given})
    defaults = {f.name: f.default_factory() if f.default is MISSING else f.default for f in model_options()}
    for name, (kinds, described) in _KIND_SPECIFIC_OPTIONS.items():
        value = getattr(config, name)
        if kind not in kinds and value != defaults[name]:
            raise ConfigError(f"{name.replace('_', ' ')} {value!r} applies to {described}, not {kind}")
    if kind == "single-conv" and len(config.channels) != 1:
        raise ConfigError(f"single-conv takes one channel count, got {config.channels}")
    side = image_size // config.stride
    if kind == "single-conv" and image_size % config.stride == 0 and side % config.pool:
        raise ConfigError(
            f"pool {config.pool} must divide the equilibrium's side {side} (image {image_size} / stride {config.stride})"
        )
    return config


class SpectralBound(nn.Module):
    r"""Parametrization :math:`U \mapsto U \cdot \min(1, c / \hat\sigma(U))`, keeping :math:`\|U\| \le c`.

    :math:`\hat\sigma` is the largest singular value of the weight reshaped to
    ``(out, -1)``, tracked by one power-iteration step per training forward (as
    ``torch.nn.utils.spectral_norm``). For a dense ``U`` that is its operator norm; for a
    convolution it is a proxy. Since the Lipschitz bound of the follow-up paper is
    :math:`\|R\|\|U\|/m`, bounding :math:`\|U\|` (with a large :math:`m`) trades accuracy for a
    smaller bound. Certificates always use the true operator norm, never this estimate.
    """

    def __init__(self, bound: float, weight: Tensor) -> None:
        super().__init__()
        self.bound = float(bound)
        matrix = weight.detach().reshape(weight.shape[0], -1)
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("u", torch.randn(matrix.shape[0], generator=generator).to(matrix))
        self.register_buffer("v", torch.randn(matrix.shape[1], generator=generator).to(matrix))
        for _ in range(30):
            self._power_step(matrix)

    @torch.no_grad()
    def _power_step(self, matrix: Tensor) -> None:
        self.v.copy_(nn.functional.normalize(matrix.T @ self.u, dim=0))
        self.u.copy_(nn.functional.normalize(matrix @ self.v, dim=0))

    def forward(self, weight: Tensor) -> Tensor:
        matrix = weight.reshape(weight.shape[0], -1)
        if self.training:
            self._power_step(matrix.detach())
        sigma = self.u @ matrix @ self.v
        return weight * (self.bound / torch.clamp(sigma, min=self.bound))


class MonDEQClassifier(nn.Module):
    """A monDEQ layer and a readout to class logits.

    Shape:
        - Input: :math:`(N, C, s, s)` images.
        - Output: :math:`(N, \\text{classes})` logits.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        operator = KINDS[c.kind].operator(c)
        self.layer = MonDEQ(
            operator,
            activation=c.activation,
            solver=c.solver,
            alpha=c.alpha,
            tol=c.tol,
            max_iter=c.max_iter,
            anderson=c.anderson,
            gradient=c.adjoint(),
        )
        with torch.no_grad():  # the readout's width follows from the pooling
            features = self.pool(torch.zeros(1, operator.features)).shape[1]
        self.readout = nn.Linear(features, c.num_classes)
        if c.input_norm is not None:
            parametrize.register_parametrization(operator.U, "weight", SpectralBound(c.input_norm, operator.U.weight))

    def features(self, x: Tensor) -> Tensor:
        """The pooled equilibrium fed to the readout, ``(N, features)``."""
        return self.pool(self.layer(x))

    def pool(self, z: Tensor | tuple[Tensor, ...]) -> Tensor:
        """Readout features ``(N, features)`` of a hidden state (flat or structured), pooled as the
        model kind says (4x4 average pooling for single-conv, the coarsest tier or all tiers for multi-conv)."""
        if isinstance(z, Tensor) and z.dim() == 2:
            z = self.layer.linear.unflatten(z)
        z = KINDS[self.config.kind].pool(self.config, z)
        return z.reshape(z.shape[0], -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x))


def is_entry_point(model: str) -> bool:
    """Whether ``model`` names a user's model, ``"package.module:function"``, rather than a preset."""
    return ":" in model


def load_entry_point(spec: str) -> Callable[..., Any]:
    """The function named by ``"package.module:function"`` (the current folder is searched too, as
    ``python -m`` does); :class:`~mondeq.errors.ConfigError` saying what is wrong otherwise."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"model entry point {spec!r} must read 'package.module:function'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"model entry point {spec!r}: cannot import {module_name!r}: {first_line(error)}") from error
    try:
        function = functools.reduce(getattr, name.split("."), module)
    except AttributeError as error:
        raise ConfigError(f"model entry point {spec!r}: module {module_name!r} has no {name!r}") from error
    if not callable(function):
        raise ConfigError(f"model entry point {spec!r} is a {type(function).__name__}, not a function")
    return function


@dataclass
class EntryPointConfig:
    """A user-defined model: ``entry_point`` names a function called as
    ``function(in_channels=C, image_size=S, num_classes=K)`` that returns an ``nn.Module`` mapping
    ``(N, C, S, S)`` images to ``(N, K)`` logits, with at least one :class:`~mondeq.MonDEQ` layer
    inside (stored in checkpoints as JSON, like :class:`ModelConfig`)."""

    entry_point: str
    in_channels: int
    image_size: int
    num_classes: int

    def to_dict(self) -> dict:
        return asdict(self)


def model_config_from_dict(data: dict) -> ModelConfig | EntryPointConfig:
    """A checkpoint's ``model`` entry: a preset's :class:`ModelConfig` or an :class:`EntryPointConfig`
    (unknown keys are refused; fields added later take their defaults)."""
    if "entry_point" not in data:
        return ModelConfig.from_dict(data)
    unknown = set(data) - {f.name for f in fields(EntryPointConfig)}
    if unknown:
        raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
    return EntryPointConfig(**data)


def model_label(config: dict) -> str:
    """How a checkpoint's ``model`` entry is named in reports: the preset or the entry point."""
    return config.get("kind") or config.get("entry_point", "?")


class EntryPointModel(nn.Module):
    """A user's model built by its entry point, with what the trainer and the commands use:
    :attr:`config` and :attr:`layer`, the first :class:`~mondeq.MonDEQ` inside it (its step size
    is tuned, its iterations logged). The user's module is :attr:`net`; ``forward`` is its own."""

    def __init__(self, config: EntryPointConfig) -> None:
        super().__init__()
        self.config = config
        build = load_entry_point(config.entry_point)
        net = build(in_channels=config.in_channels, image_size=config.image_size, num_classes=config.num_classes)
        if not isinstance(net, nn.Module):
            raise ConfigError(f"model entry point {config.entry_point!r} returned a {type(net).__name__}, not an nn.Module")
        layers = [m for m in net.modules() if isinstance(m, MonDEQ)]
        if not layers:
            raise ConfigError(
                f"model entry point {config.entry_point!r} returned a {type(net).__name__} without a MonDEQ layer "
                "(the trainer tunes its step size and reports its iterations)"
            )
        self.net = net
        # The first monDEQ layer, in module order: a plain attribute, not a second registration of
        # a submodule of ``net`` (its parameters would appear twice in the state dict).
        object.__setattr__(self, "layer", layers[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_model(config: ModelConfig | EntryPointConfig) -> MonDEQClassifier | EntryPointModel:
    """The classifier a configuration describes: a preset's or the user's."""
    return EntryPointModel(config) if isinstance(config, EntryPointConfig) else MonDEQClassifier(config)


class _Reached(Exception):
    """Raised by :func:`equilibrium_input`'s hook to stop the model at its monDEQ layer."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = value


@torch.no_grad()
def equilibrium_input(model: nn.Module, x: Tensor) -> Tensor:
    """What ``model.layer`` receives when ``model`` runs on ``x`` in evaluation mode (``x`` itself
    for the presets; the output of a user model's stem). The model stops there; its mode is restored."""

    def reached(module: nn.Module, args: tuple) -> None:
        raise _Reached(args[0])

    handle = model.layer.register_forward_pre_hook(reached)
    training = model.training
    model.eval()
    try:
        model(x)
    except _Reached as stop:
        return stop.value
    finally:
        handle.remove()
        model.train(training)
    raise ConfigError(f"{type(model).__name__} did not call its monDEQ layer on an input batch")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MonDEQClassifier | EntryPointModel, dict[str, Any]]:
    """The classifier of a checkpoint (run folder or file), and the checkpoint's metadata."""
    meta, state, _ = load_checkpoint(path)
    require(meta, "model", "train", where=f"checkpoint {path}")
    try:
        model = build_model(model_config_from_dict(meta["model"]))
        model.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path} does not describe a valid model: {first_line(error)}") from error
    data = meta.get("data")
    if data is not None and (data["channels"], data["image_size"]) != (model.config.in_channels, model.config.image_size):
        raise CheckpointError(
            f"checkpoint {path}: its data entry ({data['channels']} channels, {data['image_size']} pixels) does not match "
            f"its model ({model.config.in_channels} channels, {model.config.image_size} pixels)"
        )
    model.layer.alpha = meta.get("alpha", model.layer.alpha)  # validated with the checkpoint
    return model.to(resolve_device(device)), meta
