"""Training and evaluation of monDEQ classifiers: the code path behind ``mondeq train``.

One job a module:

- ``config``: :class:`TrainConfig` (each option a field: the flags follow) and :data:`RECIPES`;
- ``schedule``: the optimiser, the learning-rate schedule and the step-size search;
- ``evaluation``: the test set's loss and accuracy;
- ``budget``: wall time across resumptions and the time budget;
- ``metrics``: running totals, ``metrics.csv``, TensorBoard, the epoch line;
- ``run_folder``: one writer per run folder, nothing overwritten, nothing left behind;
- ``run_state``: a run's stored configuration and model, checked before it comes back;
- ``step``: one training step (with the tolerance schedule) and the fixed-point store, shared with the benchmarks;
- ``averaging``: the running average of the weights (``--average``);
- ``signals``: SIGINT and SIGTERM as stop requests honoured between batches;
- ``loop``: :class:`Trainer`, the loop itself, and what its checkpoints hold.
"""

from ..errors import TrainingInterrupted
from .averaging import AverageSpec, WeightAverage, parse_average
from .config import BUDGET_EPOCHS, LR_SCHEDULES, RECIPES, RESUMABLE_OPTIONS, REUSE_MODES, Recipe, TrainConfig
from .evaluation import EvalResult, evaluate
from .loop import STALL_STEPS, StopReason, Trainer
from .metrics import METRIC_FIELDS, RunningTotals
from .run_folder import RUN_OUTPUTS
from .schedule import learning_rate, make_optimizer, tune_alpha, tunes_alpha

__all__ = [
    "AverageSpec",
    "BUDGET_EPOCHS",
    "LR_SCHEDULES",
    "METRIC_FIELDS",
    "RECIPES",
    "RESUMABLE_OPTIONS",
    "REUSE_MODES",
    "RUN_OUTPUTS",
    "STALL_STEPS",
    "EvalResult",
    "Recipe",
    "RunningTotals",
    "StopReason",
    "TrainConfig",
    "Trainer",
    "WeightAverage",
    "TrainingInterrupted",
    "evaluate",
    "learning_rate",
    "make_optimizer",
    "parse_average",
    "tune_alpha",
    "tunes_alpha",
]
