"""What a classifier is made of: :class:`ModelConfig` (each option a field: the flags follow), the
presets of each kind per data set, and which options a kind takes."""

from __future__ import annotations

from dataclasses import MISSING, Field, asdict, dataclass, field, fields

from .. import tolerances
from ..activations import ACTIVATIONS
from ..errors import ConfigError
from ..gradients import GRADIENTS, Adjoint, get_gradient
from ..solvers import SOLVERS
from ..validation import Requires, check_options, option, options_of
from .entry_point import EntryPointConfig
from .kinds import KINDS

__all__ = ["READOUTS", "ModelConfig", "model_config_from_dict", "model_options", "option_applies", "preset_config"]

#: What multi-conv's readout sees: the coarsest tier, or every tier average-pooled to its size.
READOUTS = ("last", "all")


#: The model kinds an option applies to, and how an error names them (``option(..., kinds=...)``):
#: with any other kind the option is refused unless left at its default.
_FC = (("fc",), "fc")
_CONV = (("single-conv", "multi-conv"), "the convolutional models")
_SINGLE = (("single-conv",), "single-conv")
_MULTI = (("multi-conv",), "multi-conv")
_CERTIFIABLE = (("fc", "single-conv"), "fc and single-conv")

#: The phantom gradient's settings mean something only with that gradient.
_PHANTOM = Requires("gradient", lambda gradient: gradient == "phantom", "sets --gradient phantom")


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
    width: int = field(default=87, metadata=option("hidden units of the fc model", "positive_int", kinds=_FC))
    channels: list[int] = field(
        default_factory=lambda: [54],
        metadata=option("channels (one per tier for multi-conv)", "positive_int", nargs="+", kinds=_CONV),
    )
    kernel_size: int = field(
        default=3, metadata=option("odd kernel size of the conv models' convolutions (preset 3)", "positive_int", kinds=_CONV)
    )
    pool: int = field(
        default=4, metadata=option("average pooling of the single-conv readout (preset 4)", "positive_int", kinds=_SINGLE)
    )
    stride: int = field(
        default=1,
        metadata=option(
            "stride of the conv models' input injection: 2 halves the equilibrium's side", "positive_int", kinds=_CONV
        ),
    )
    readout: str = field(
        default="last",
        metadata=option(
            "multi-conv's readout: the coarsest tier (preset last) or all tiers pooled to its size",
            "choice",
            choices=READOUTS,
            kinds=_MULTI,
        ),
    )
    m: float = field(default=1.0, metadata=option("monotonicity margin m > 0 (preset 1.0)", "positive"))
    activation: str = field(default="relu", metadata=option("proximal activation (preset relu)", "choice", choices=ACTIVATIONS))
    solver: str = field(default="pr", metadata=option("splitting method (preset pr)", "choice", choices=SOLVERS))
    alpha: float = field(default=1.0, metadata=option("splitting step size (preset 1.0, then tuned)", "positive"))
    tol: float = field(
        default=tolerances.TRAINING,
        metadata=option(
            f"relative residual tolerance, in (0, 1) (preset {tolerances.TRAINING:g}: a training step needs a descent "
            "direction, not digits)",
            "tolerance",
        ),
    )
    max_iter: int = field(default=300, metadata=option("solver iteration cap (preset 300)", "positive_int"))
    anderson: int = field(default=0, metadata=option("Anderson acceleration memory (0: off)", "count"))
    compiled: bool = field(
        default=False,
        metadata=option(
            "compile each splitting iteration with torch.compile (paid once per process; eager where it fails)", "flag"
        ),
    )
    gradient: str = field(
        default="implicit",
        metadata=option(
            "how gradients are computed: implicit (exact, a backward solve), phantom (damped unrolled steps), "
            "jacobian-free (one step, no backward solve)",
            "choice",
            choices=GRADIENTS,
        ),
    )
    phantom_steps: int = field(
        default=5, metadata=option("unrolled steps of --gradient phantom (default 5)", "positive_int", requires=_PHANTOM)
    )
    phantom_damping: float = field(
        default=0.5,
        metadata=option("damping of --gradient phantom's steps, in (0, 1] (default 0.5)", "damping", requires=_PHANTOM),
    )
    #: Spectral bound on the input injection U (None: unconstrained); see :class:`SpectralBound`.
    input_norm: float | None = field(
        default=None,
        metadata=option(
            "keep ||U|| <= C (spectral normalisation); with a large --m it lowers the bound ||R|| ||U|| / m",
            "positive",
            metavar="C",
        ),
    )
    #: The logits are this-Lipschitz in l2 of the model's input by construction (None: unbounded); see
    #: :class:`~mondeq.models.MonDEQClassifier`.
    lipschitz: float | None = field(
        default=None,
        metadata=option(
            "make the map from (normalised) input to logits GAMMA-Lipschitz in l2 for every weight: exact "
            "norm bounds on U and the readout (fc, single-conv)",
            "positive",
            metavar="GAMMA",
            kinds=_CERTIFIABLE,
        ),
    )
    interval: bool = field(
        default=False,
        metadata=option(
            "the interval operator W = D^-1/2 M D^-1/2 (fc: M dense; single-conv: M a convolution; m < 1), "
            "whose interval bounds converge: l-infinity certificates and --certified linf:EPS",
            "flag",
            kinds=_CERTIFIABLE,
        ),
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown model {self.kind!r}; choose one of {list(KINDS)}")
        check_options(self)
        if self.lipschitz is not None and self.input_norm is not None:
            raise ConfigError("lipschitz bounds ||U|| itself; input_norm would bound it twice: give one of them")
        if self.interval and self.lipschitz is not None:
            raise ConfigError("interval (l-infinity bounds) and lipschitz (l2) are two certified models: choose one")
        if self.interval and not self.m < 1:
            raise ConfigError(f"the interval operator needs a margin m < 1 (|W| <= 1 - m), got m = {self.m:g}")

    def adjoint(self) -> Adjoint:
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


def model_options() -> list[Field]:
    """The fields of :class:`ModelConfig` that a user may set (each a ``mondeq train`` flag)."""
    return options_of(ModelConfig)


def option_applies(name: str, kind: str) -> bool:
    """Whether model option ``name`` means anything for the preset ``kind`` (its ``kinds`` metadata)."""
    meta = next((f.metadata for f in model_options() if f.name == name), {})
    return kind in meta.get("kinds", (KINDS, ""))[0]


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
    for f in model_options():
        kinds, described = f.metadata.get("kinds", (KINDS, ""))
        value = getattr(config, f.name)
        if kind not in kinds and value != defaults[f.name]:
            raise ConfigError(f"{f.name.replace('_', ' ')} {value!r} applies to {described}, not {kind}")
    if kind == "single-conv" and len(config.channels) != 1:
        raise ConfigError(f"single-conv takes one channel count, got {config.channels}")
    side = image_size // config.stride
    if kind == "single-conv" and image_size % config.stride == 0 and side % config.pool:
        raise ConfigError(
            f"pool {config.pool} must divide the equilibrium's side {side} (image {image_size} / stride {config.stride})"
        )
    return config


def model_config_from_dict(data: dict) -> ModelConfig | EntryPointConfig:
    """A checkpoint's ``model`` entry: a preset's :class:`ModelConfig` or an :class:`EntryPointConfig`
    (unknown keys are refused; fields added later take their defaults)."""
    if "entry_point" not in data:
        return ModelConfig.from_dict(data)
    unknown = set(data) - {f.name for f in fields(EntryPointConfig)}
    if unknown:
        raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
    return EntryPointConfig(**data)
