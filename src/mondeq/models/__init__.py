"""The paper's monDEQ image classifiers, their named presets, and the user's own models.

Each preset classifier is a :class:`~mondeq.MonDEQ` layer followed by a readout:

- ``fc``: fully connected operator on the flattened image, linear readout.
- ``single-conv``: single convolution, average pooling, linear readout.
- ``multi-conv``: multi-tier convolution, linear readout of the coarsest tier (``readout="all"``:
  of every tier, average-pooled to the coarsest tier's size).

Any other architecture enters through an entry point ``"package.module:function"``
(:class:`EntryPointConfig`). Sizes follow the paper (Winston & Kolter 2020, and its public
experiments) per data set; every size is overridable. One job a module:

- ``config``: :class:`ModelConfig` (each option a field), the presets, which options a kind takes;
- ``kinds``: the registry :data:`KINDS` (operator, readout pooling, paper sizes);
- ``classifier``: :class:`MonDEQClassifier`;
- ``spectral``: norm bounds of weights: :class:`SpectralBound` (estimated), :class:`NormBound` (exact);
- ``entry_point``: the user's own model by ``package.module:function``;
- ``loading``: :func:`build_model`, :func:`load_model` from a checkpoint.
"""

from .classifier import MonDEQClassifier
from .config import READOUTS, ModelConfig, model_config_from_dict, model_options, option_applies, preset_config
from .entry_point import EntryPointConfig, EntryPointModel, is_entry_point, load_entry_point
from .kinds import KINDS, MODEL_KINDS, ClassifierKind, pool_tiers
from .loading import build_model, equilibrium_input, load_model, model_label, test_set_of, weights_used
from .spectral import ConvNormBound, NormBound, SpectralBound, linear_norm, strided_conv_norm

__all__ = [
    "ConvNormBound",
    "NormBound",
    "linear_norm",
    "strided_conv_norm",
    "KINDS",
    "MODEL_KINDS",
    "READOUTS",
    "ClassifierKind",
    "EntryPointConfig",
    "EntryPointModel",
    "ModelConfig",
    "MonDEQClassifier",
    "SpectralBound",
    "build_model",
    "equilibrium_input",
    "is_entry_point",
    "load_entry_point",
    "load_model",
    "model_config_from_dict",
    "model_label",
    "model_options",
    "option_applies",
    "pool_tiers",
    "preset_config",
    "test_set_of",
    "weights_used",
]
