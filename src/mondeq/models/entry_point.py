"""A user's own model as an entry point ``"package.module:function"``: built by calling it, stored by name."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError, first_line
from ..layer import MonDEQ

__all__ = ["EntryPointConfig", "EntryPointModel", "is_entry_point", "load_entry_point"]


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
