"""The options of a training run (:class:`TrainConfig`) and the measured sets of them (:data:`RECIPES`).

Each option is one field with :func:`~mondeq.validation.option` metadata: its help, the kind of
value and whether ``--resume`` may change it. The ``mondeq train`` flags, their validation and
:data:`RESUMABLE_OPTIONS` all follow from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..data import DATASET_NAMES, Augmentation, DatasetInfo, dataset_info
from ..errors import ConfigError
from ..models import MODEL_KINDS, EntryPointConfig, ModelConfig, is_entry_point, model_options, option_applies, preset_config
from ..robust.training import CertifiedObjective, parse_certified
from ..validation import Requires, check_options, option
from .averaging import parse_average

__all__ = ["BUDGET_EPOCHS", "LR_SCHEDULES", "RECIPES", "RESUMABLE_OPTIONS", "REUSE_MODES", "Recipe", "TrainConfig"]

#: Epoch cap of a run given a time budget and no epoch count.
BUDGET_EPOCHS = 1000

#: Learning-rate schedules (:func:`~mondeq.train.schedule.learning_rate`).
LR_SCHEDULES = ("step", "one-cycle", "constant")

#: What fixed-point reuse keeps (:mod:`mondeq.reuse`).
REUSE_MODES = ("off", "forward", "both")


@dataclass(frozen=True)
class Recipe:
    """A named set of :class:`TrainConfig` options (``model_options`` among them) that was measured.

    Attributes:
        summary: one line for ``mondeq train --help``.
        settings: the options; explicit ones given with the recipe override them.
        measured: where its result is recorded.
    """

    summary: str
    settings: dict[str, Any]
    measured: str = "docs/results.md"

    def options(self, explicit: dict[str, Any]) -> dict[str, Any]:
        """The recipe's options updated by ``explicit`` ones (model options merged key by key). When
        ``explicit`` names another model, the recipe's model options that mean nothing for it are
        dropped (all of them for a model entry point): :meth:`dropped` names them."""
        dropped = self.dropped(explicit)
        recipe_sizes = {k: v for k, v in self.settings.get("model_options", {}).items() if k not in dropped}
        model = {**recipe_sizes, **explicit.get("model_options", {})}
        return {**self.settings, **explicit, "model_options": model}

    def dropped(self, explicit: dict[str, Any]) -> list[str]:
        """The recipe's model options that the model ``explicit`` names does not take."""
        kind = explicit.get("model", self.settings.get("model"))
        return [name for name in self.settings.get("model_options", {}) if is_entry_point(kind) or not option_applies(name, kind)]


#: The settings the Fashion-MNIST recipes share (docs/results.md; the searches: docs/notes.md).
_FMNIST = {
    "dataset": "fashion-mnist",
    "model": "single-conv",
    "lr": 4e-3,
    "lr_schedule": "one-cycle",
    "augment": False,  # crop + flip slowed learning in the first hour search
    "label_smoothing": 0.1,
    "weight_decay": 0.05,
    "eval_every": 3,  # evaluating every epoch costs minutes of a short budget
}

#: Recipes for ``mondeq train --recipe NAME``: each measured as written (docs/results.md).
RECIPES: dict[str, Recipe] = {
    "fmnist-fast": Recipe(
        summary="Fashion-MNIST in 28 minutes on 2 CPU cores: 91.79% (single-conv 14x14, 7x7 kernels, 28 channels, 92k params)",
        settings={
            **_FMNIST,
            "time_budget": 28.0,
            "out": "runs/fmnist-fast",
            "reuse": "both",  # each example's forward and backward solves start where its last visit ended
            # 7x7 kernels on 28 channels (91,964 parameters): epochs about 60% of the 3x3/60-channel model's;
            # exact (implicit) gradients: the Jacobian-free one ran twice the epochs and ended lower (91.34%)
            "model_options": {"channels": [28], "kernel_size": 7, "stride": 2, "pool": 2, "m": 0.5, "tol": 3e-2},
        },
    ),
    "fmnist-hour": Recipe(
        summary="Fashion-MNIST in one hour on 2 CPU cores: 92.00% (single-conv 14x14, 60 channels, 95k parameters)",
        settings={
            **_FMNIST,
            "time_budget": 59.0,  # the whole command within the hour
            "out": "runs/fmnist-hour",
            # m = 0.5 (I - W >= I/2): 91.76% against 91.33% at the paper's m = 1; tol 3e-2: 14.4 epochs, not 12.2
            "model_options": {"channels": [60], "stride": 2, "pool": 2, "m": 0.5, "tol": 3e-2},
        },
    ),
}


#: The certified radius's schedule means something only with certified training.
_CERTIFIED = Requires("certified", lambda certified: certified is not None, "schedules the certified radius")


def _model_flag_help() -> str:
    return (
        "a preset (default single-conv), or your own model: FUNCTION(in_channels=, image_size=, num_classes=) "
        "in MODULE returns an nn.Module with a MonDEQ layer (docs: Your own monotone layer)"
    )


@dataclass
class TrainConfig:
    """Options of ``mondeq train`` (``None`` means: the preset's value, or unset); each field is a flag."""

    dataset: str = field(
        default="fashion-mnist",
        metadata=option("data set; folder: --data-dir DIR/{train,test}/CLASS/*", "choice", choices=DATASET_NAMES),
    )
    model: str = field(
        default="single-conv",
        metadata=option(_model_flag_help(), "text", parser="model", metavar="{" + ",".join(MODEL_KINDS) + "} or MODULE:FUNCTION"),
    )
    epochs: int | None = field(
        default=None,
        metadata=option("epochs (default 1; with --time-budget: until the budget is spent)", "positive_int", resumable=True),
    )
    time_budget: float | None = field(
        default=None,
        metadata=option(
            "wall time for the whole run (90s, 45m, 1h): stops in time to evaluate and save",
            "positive",
            parser="duration",
            metavar="DURATION",
            resumable=True,
        ),
    )
    batch_size: int = field(default=128, metadata=option("training batch size", "positive_int"))
    #: 2.4x the throughput of 400 for single-conv (docs/benchmarks.md, section 9).
    test_batch_size: int = field(default=128, metadata=option("evaluation batch size", "positive_int"))
    lr: float = field(default=1e-3, metadata=option("(peak) learning rate", "positive"))
    lr_schedule: str = field(default="step", metadata=option("learning-rate schedule", "choice", choices=LR_SCHEDULES))
    lr_step: int = field(
        default=10,
        metadata=option(
            "epochs between 10x decays of the step schedule",
            "positive_int",
            requires=Requires("lr_schedule", lambda schedule: schedule == "step", "sets the step schedule's decay"),
        ),
    )
    weight_decay: float = field(
        default=0.0, metadata=option("decoupled (AdamW) weight decay of the weights and kernels", "non_negative")
    )
    label_smoothing: float = field(
        default=0.0, metadata=option("label smoothing of the training loss (the test loss stays plain)", "unit_interval")
    )
    eval_every: int = field(
        default=1,
        metadata=option(
            "evaluate every EPOCHS epochs (0: only at the end, which is always evaluated)",
            "count",
            metavar="EPOCHS",
            resumable=True,
        ),
    )
    tune_alpha: bool = field(default=True, metadata=option("tune the splitting step size alpha during training", "flag"))
    max_alpha: float = field(
        default=1.0,
        metadata=option(
            "largest alpha tried when tuning",
            "positive",
            requires=Requires("tune_alpha", bool, "bounds the tuned step size"),
        ),
    )
    strict: bool = field(
        default=False,
        metadata=option("stop a run whose solver is stuck at its iteration cap (a diverging run)", "flag", resumable=True),
    )
    reuse: str = field(
        default="off",
        metadata=option(
            "fixed-point reuse: start each example's solves where its last visit ended (forward; both: and backward)",
            "choice",
            choices=REUSE_MODES,
        ),
    )
    reuse_memory: float = field(
        default=4.0, metadata=option("memory cap of the fixed-point store, in GB", "positive", metavar="GB")
    )
    certified: str | None = field(
        default=None,
        metadata=option(
            "train for certificates at radius EPS (pixels in [0, 1]): l2:EPS (a --lipschitz model: margin loss) "
            "or linf:EPS (an --interval model: interval bound propagation)",
            "text",
            metavar="NORM:EPS",
        ),
    )
    certified_warmup: float = field(
        default=1.0,
        metadata=option(
            "epochs of plain training before the certified radius ramps up from 0",
            "non_negative",
            metavar="EPOCHS",
            requires=_CERTIFIED,
        ),
    )
    certified_ramp: float = field(
        default=5.0,
        metadata=option(
            "epochs over which the certified radius rises linearly to EPS", "non_negative", metavar="EPOCHS", requires=_CERTIFIED
        ),
    )
    certified_reuse: bool = field(
        default=True,
        metadata=option(
            "l-infinity certified training: start each example's interval iteration from the box of its last visit and "
            "run only the taped iterations (--no-certified-reuse: from the sound start box every step; certificates "
            "always start there)",
            "flag",
            requires=_CERTIFIED,
        ),
    )
    augment: bool | None = field(default=None, metadata=option("random crop + flip (default: on for cifar10)", "flag"))
    shift: int = field(
        default=0,
        metadata=option("random translation of each training image by up to PIXELS along each axis", "count", metavar="PIXELS"),
    )
    erase: float = field(
        default=0.0,
        metadata=option("random erasing: the probability that a training image has a random rectangle blanked", "unit_interval"),
    )
    average: str = field(
        default="off",
        metadata=option(
            "weight averaging, evaluated and saved beside the trained weights: ema[:DECAY] (default 0.999), "
            "swa[:START] (equal average from the fraction START of the run, default 0.75), or off",
            "text",
            metavar="KIND[:VALUE]",
        ),
    )
    tol_peak: float | None = field(
        default=None,
        metadata=option(
            "training solves' tolerance at the peak learning rate: it moves with the learning rate, geometrically "
            "between the model's --tol (learning rate 0) and this",
            "tolerance",
            metavar="TOL",
        ),
    )
    seed: int = field(default=0, metadata=option("random seed", "seed"))
    out: str = field(default="runs/default", metadata=option("run folder (default runs/DATASET-MODEL)", "text"))
    data_dir: str | None = field(
        default=None,
        metadata=option("folder with the data set files (default: $MONDEQ_DATA or ~/.cache/mondeq/data)", "text", resumable=True),
    )
    device: str = field(default="cpu", metadata=option("cpu, cuda or cuda:N", "text", resumable=True))
    threads: int | None = field(
        default=None, metadata=option("torch CPU threads (default: all cores)", "positive_int", resumable=True)
    )
    train_limit: int | None = field(default=None, metadata=option("use only the first N training images", "positive_int"))
    test_limit: int | None = field(default=None, metadata=option("use only the first N test images", "positive_int"))
    checkpoint_every: float = field(
        default=10.0,
        metadata=option(
            "also save a checkpoint inside an epoch this often (0: only at epoch ends)",
            "non_negative",
            metavar="MINUTES",
            resumable=True,
        ),
    )
    recipe: str | None = field(
        default=None,
        metadata=option(
            "a measured set of options (explicit flags override it): "
            + "; ".join(f"{name}: {recipe.summary}" for name, recipe in RECIPES.items()),
            "choice",
            choices=RECIPES,
        ),
    )
    #: Overrides of the preset's :class:`~mondeq.models.ModelConfig` (``width``, ``channels``, ``m``, ...);
    #: their flags come from that class.
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs is None:
            self.epochs = BUDGET_EPOCHS if self.time_budget is not None else 1
        check_options(self)
        if self.model not in MODEL_KINDS and not is_entry_point(self.model):
            raise ConfigError(f"unknown model {self.model!r}; choose one of {list(MODEL_KINDS)} or a 'package.module:function'")
        if not str(self.out).strip():
            raise ConfigError("out (the run folder) must not be empty")
        parse_average(self.average)
        self.model_options = {k: v for k, v in self.model_options.items() if v is not None}
        model = self.model_config()  # validates the model options
        if self.certified is not None:
            self.certified_objective(model)

    def certified_objective(self, model: ModelConfig | EntryPointConfig | None = None) -> CertifiedObjective | None:
        """The certified-training schedule of ``certified`` (``None`` when unset), checked against the
        model it trains: ``l2`` needs a ``lipschitz`` model, ``linf`` an ``interval`` one."""
        if self.certified is None:
            return None
        norm, eps = parse_certified(self.certified)
        model = self.model_config() if model is None else model
        needs = {
            "l2": ("lipschitz", "--lipschitz GAMMA"),
            "linf": ("interval", "--interval --m 0.5 (--model fc or single-conv)"),
        }[norm]
        if not isinstance(model, ModelConfig) or not getattr(model, needs[0]):
            raise ConfigError(f"certified {self.certified}: {norm} certified training needs a model built for it ({needs[1]})")
        return CertifiedObjective(norm, eps, self.certified_warmup, self.certified_ramp)

    def augmentation(self, info: DatasetInfo) -> Augmentation:
        """What each training batch goes through: crop + flip (``augment``, default the data set's),
        translation (``shift``) and erasing (``erase``)."""
        crop_flip = info.augment if self.augment is None else self.augment
        return Augmentation(crop_flip=crop_flip, shift=self.shift, erase=self.erase)

    def model_config(self) -> ModelConfig | EntryPointConfig:
        info = dataset_info(self.dataset, self.data_dir)
        if is_entry_point(self.model):
            if self.model_options:
                raise ConfigError(
                    f"model options ({', '.join(sorted(self.model_options))}) size the presets; "
                    f"the entry point {self.model!r} builds its own model"
                )
            return EntryPointConfig(self.model, info.channels, info.image_size, len(info.classes))
        return preset_config(self.model, self.dataset, info.channels, info.image_size, len(info.classes), **self.model_options)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """A configuration from a checkpoint's ``train`` entry (also one written before
        ``model_options``, whose overrides were fields of their own)."""
        known = {f.name for f in fields(cls)}
        options = {f.name for f in model_options()}
        legacy = {k: v for k, v in data.items() if k in options and v is not None}
        config = {k: v for k, v in data.items() if k in known}
        config["model_options"] = {**legacy, **config.get("model_options", {})}
        return cls(**config)


#: Options that may differ from a run's stored configuration when it is resumed (``resumable`` metadata).
RESUMABLE_OPTIONS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("resumable"))
