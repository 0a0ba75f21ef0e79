"""Building a classifier from its configuration, and loading one from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, require, weights_taken
from ..data.dataset import DATA_SCHEMA
from ..devices import resolve_device
from ..errors import CheckpointError, ConfigError, first_line
from ..validation import POSITIVE, Schema, check_entries
from .classifier import MonDEQClassifier
from .config import ModelConfig, model_config_from_dict
from .entry_point import EntryPointConfig, EntryPointModel

__all__ = ["ALPHA_SCHEMA", "build_model", "equilibrium_input", "load_model", "model_label", "test_set_of", "weights_used"]


#: The checkpoint entry of the layer's step size (the model's, read by every loader).
ALPHA_SCHEMA: Schema = {"alpha": (POSITIVE.accepts, "a finite number > 0")}


def model_label(config: dict) -> str:
    """How a checkpoint's ``model`` entry is named in reports: the preset or the entry point."""
    return config.get("kind") or config.get("entry_point", "?")


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


def load_model(
    path: str | Path, device: str | torch.device = "cpu", weights: str = "average"
) -> tuple[MonDEQClassifier | EntryPointModel, dict[str, Any]]:
    """The classifier of a checkpoint (run folder or file), and the checkpoint's metadata.

    ``weights``: ``"average"`` (default) takes the run's averaged weights when it kept some
    (``--average``; :func:`weights_used` says which were taken), ``"model"`` the trained ones."""
    meta, state, _ = load_checkpoint(path, weights=weights)
    require(meta, "model", "train", where=f"checkpoint {path}")
    check_entries(meta, {**DATA_SCHEMA, **ALPHA_SCHEMA}, where=f"checkpoint {path}")
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


def weights_used(meta: dict[str, Any], weights: str) -> str | None:
    """A note naming the averaged weights when :func:`load_model` took them (``None`` otherwise)."""
    if weights_taken(meta, weights) != "average":
        return None
    average = meta["average"]
    return f"the averaged weights ({average['spec']}, {average['updates']:,} steps); --weights model for the trained ones"


def test_set_of(meta: dict[str, Any], data_dir: str | None = None, limit: int | None = None):
    """The test split of the data set a checkpoint was trained on (``data_dir`` overrides its folder),
    its first ``limit`` images."""
    from ..data import load_dataset

    train = meta["train"]
    return load_dataset(train["dataset"], "test", data_dir or train.get("data_dir")).subset(limit)
