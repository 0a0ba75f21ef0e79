"""The training loop: epochs of steps, evaluations and checkpoints, and the rules that stop it.

The loop owns the order of things; everything else lives beside it: the options (:mod:`.config`),
what a step uses (:mod:`.schedule`), the test set (:mod:`.evaluation`), wall time (:mod:`.budget`),
the reports (:mod:`.metrics`), the folder (:mod:`.run_folder`), checkpoints (:mod:`.run_state`)
and signals (:mod:`.signals`).
"""

from __future__ import annotations

import enum
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import distributed
from ..checkpoint import load_checkpoint, require
from ..data import Batches, ImageDataset, load_dataset
from ..devices import resolve_device
from ..errors import CheckpointError, ConfigError, DivergenceError, TrainingInterrupted, first_line, ignore_convergence_warnings
from ..models import build_model
from . import run_state
from .averaging import WeightAverage, parse_average
from .budget import TimeBudget
from .config import TrainConfig
from .evaluation import EvalResult, evaluate
from .metrics import MetricsLog, RunningTotals
from .run_folder import RunFolder
from .schedule import make_optimizer, tunes_alpha
from .signals import StopRequests
from .step import Objective, reuse_store, train_step

__all__ = ["STALL_STEPS", "StopReason", "Trainer"]

#: Training steps in a row with a solve at its iteration cap after which a run is called stalled
#: (said once on stderr; an error with ``strict``). An epoch of fewer steps stalls when all are capped.
STALL_STEPS = 20


class StopReason(enum.Enum):
    """Why :meth:`Trainer.fit`'s pass over an epoch ended before its last batch."""

    BATCHES = "the batches asked for ran"  # ``stop_after_batches``
    TIME = "the time budget is spent"


class Trainer:
    """Runs ``config`` to completion, writing checkpoints, ``metrics.csv`` and TensorBoard logs to ``config.out``.

    Nothing is lost to an interruption: SIGINT and SIGTERM stop the loop between two batches
    (or during the epoch's evaluation) and save a checkpoint of that exact position, then
    :meth:`fit` raises :class:`~mondeq.errors.TrainingInterrupted`; a checkpoint is also written
    every ``config.checkpoint_every`` minutes, so even ``kill -9`` loses at most that much work.
    Resuming reproduces an uninterrupted run bit for bit.

    With ``config.time_budget`` the run ends when the budget is spent: training stops between
    two batches early enough for a last evaluation (its expected time is held back), which is
    recorded as a fractional epoch and saved; one-cycle then spans the budget. A budgeted run's
    learning rate follows the clock, so it is not bit-reproducible; resuming it with a larger
    ``time_budget`` continues from the exact position, with the schedule stretched over the new
    budget (one-cycle's learning rate rises again).

    A run folder has one writer (``run_folder.RunFolder``): the trainer holds
    its lock from construction to the end of :meth:`fit`, and a folder that holds a run is refused
    unless ``on_existing`` is ``"overwrite"`` or the run is resumed (:meth:`resume_run`). A run
    that diverges (a non-finite loss or parameter) stops with
    :class:`~mondeq.errors.DivergenceError` without saving, so its last checkpoint is the last
    good state; steps whose solve stopped at the iteration cap are counted per epoch
    (``capped_steps``), and with ``config.strict`` a solver at its cap for :data:`STALL_STEPS`
    steps in a row stops the run the same way.
    """

    #: The clock of the time budget and of periodic checkpoints (seconds; replaceable in tests).
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(
        self,
        config: TrainConfig,
        train_set: ImageDataset | None = None,
        test_set: ImageDataset | None = None,
        progress: bool = True,
        on_existing: str = "refuse",
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.out = Path(config.out)
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.train_set = (train_set or load_dataset(config.dataset, "train", config.data_dir)).subset(config.train_limit)
        self.test_set = (test_set or load_dataset(config.dataset, "test", config.data_dir)).subset(config.test_limit)
        try:
            self.model = build_model(config.model_config()).to(self.device)
            self.model.layer.linear.check_step_size(self.model.layer.alpha)  # before an epoch, not after
            self.model.layer.linear.check_margin()
        except (ValueError, TypeError) as error:
            raise ConfigError(f"model {config.model!r} cannot be built as asked: {first_line(error)}") from error
        self.optimizer = make_optimizer(self.model, config)
        certified, smoothing = config.certified_objective(), config.label_smoothing
        #: The training loss of a batch: the cross-entropy, or the certified objective of ``--certified``.
        self.objective: Objective = (
            certified.bind(self.model, self.train_set.info, self.model.config.lipschitz, smoothing)
            if certified is not None
            else lambda logits, x, y, epoch: F.cross_entropy(logits, y, label_smoothing=smoothing)
        )
        spec = parse_average(config.average)
        #: The running average of the weights (``--average``), evaluated instead of them; ``None``: off.
        self.average = WeightAverage(self.model, spec) if spec is not None else None
        self.fixed_points = reuse_store(config, self.model, len(self.train_set), self.device)
        if self.fixed_points is not None:
            self.model.layer.fixed_points = self.fixed_points
        self.epoch, self.batch = 0, 0
        self.running = RunningTotals()
        self.wrapped = distributed.wrap(self.model)
        self.budget = TimeBudget(config.time_budget, lambda: self.clock())
        self.log = MetricsLog(self.out, progress)
        self.folder = RunFolder(self.out)
        self._last_save = self.clock()
        self._capped_streak = 0  # training steps in a row with a solve at its iteration cap
        self._batches_left = math.inf
        self.folder.claim(on_existing)

    @classmethod
    def resume_run(cls, run: str | Path, options: dict[str, Any] | None = None, progress: bool = True, **datasets) -> Trainer:
        """A trainer that continues the run in folder ``run`` with its stored configuration.

        ``options`` may change only :data:`~mondeq.train.RESUMABLE_OPTIONS`; any other option whose
        value differs from the stored one is refused with a ``ValueError`` naming it.
        """
        run = Path(run)
        config, checkpoint = run_state.config_to_resume(run, options)
        trainer = cls(config, progress=progress, on_existing="resume", **datasets)
        try:
            trainer.resume(run, checkpoint)
        except BaseException:  # a checkpoint it cannot continue: the folder is free again at once
            trainer.folder.release(failed=True)
            raise
        return trainer

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, stopping: bool = False) -> Path | None:
        """Commit a checkpoint of the present position (rank 0 writes it).

        The fixed-point store (gigabytes for a large training set) goes with the checkpoints of
        an interruption (``stopping``: a signal, ``stop_after_batches``), from which a resumed run
        continues bit for bit; not with the periodic and epoch-end ones, where writing it would
        cost more than reuse saves: a run resumed from those starts each example cold once and
        agrees with an uninterrupted one to the solver's tolerance. A distributed run's stores
        (one per process) are never saved.
        """
        self._last_save = self.clock()
        keep = stopping and self.fixed_points is not None and distributed.world_size() == 1
        attachments = {run_state.FIXED_POINTS: self.fixed_points.state_dict()} if keep else None
        entries = self.state_entries()
        average = self.average.state_dict() if self.average is not None else None
        return self.folder.save((self.epoch, self.batch), self.model, self.optimizer, entries, attachments, average)

    def resume(self, path: str | Path | None = None, checkpoint: tuple | None = None) -> None:
        """Continue from a checkpoint (default: the one in ``config.out``); ``checkpoint`` is what
        :func:`~mondeq.checkpoint.load_checkpoint` already read from ``path``, when it was."""
        path = path or self.out
        self.load_state(path, checkpoint or load_checkpoint(path))
        self._last_save = self.clock()

    @property
    def history(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.csv`` so far (the metrics log's)."""
        return self.log.history

    def state_entries(self) -> dict[str, Any]:
        """The JSON entries of a checkpoint of this run at its present position, each part's own."""
        return {
            "model": self.model.config.to_dict(),
            "train": asdict(self.config),
            "data": self.train_set.info.to_dict(),  # classes and normalisation, for predict
            "epoch": self.epoch,
            "batch": self.batch,
            "world_size": distributed.world_size(),
            "alpha": self.model.layer.alpha,
            **self.running.state_dict(),
            **self.log.state_dict(),
            **self.budget.state_dict(),
            **({"average": self.average.entry()} if self.average is not None else {}),
        }

    def load_state(self, path: str | Path, checkpoint: tuple) -> None:
        """Go to the position of ``checkpoint`` (what :func:`~mondeq.checkpoint.load_checkpoint` read from
        ``path``): weights, optimiser, position, totals, alpha, history, budget, fixed points; each part
        checks its own entries."""
        meta, state, optimizer_state = checkpoint
        where = f"checkpoint {path}"
        epoch, batch = run_state.position(meta, where)
        run_state.check_model(meta, self.model.config.to_dict(), path)
        running = RunningTotals()
        running.load_state_dict(meta, where)
        try:
            self.model.load_state_dict(state)
            if optimizer_state is not None:
                self.optimizer.load_state_dict(optimizer_state)
            self.model.layer.alpha = meta["alpha"]
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            raise CheckpointError(f"cannot resume from checkpoint {path}: {first_line(error)}") from error
        self.log.load_state_dict(meta, where)
        self.budget.load_state_dict(meta, where)
        self.epoch, self.batch, self.running = epoch, batch, running
        self.folder.saved = (epoch, batch)
        saved_world = meta.get("world_size", 1)
        if self.batch and saved_world != distributed.world_size():
            # Mid-epoch with another number of processes: skip as many examples as were seen.
            self.batch = math.ceil(self.batch * saved_world / distributed.world_size())
        batches = len(self.batches(epoch))
        if self.batch > batches:
            raise CheckpointError(f"checkpoint {path}: batch {batch} is beyond the {batches} batches of an epoch")
        if self.fixed_points is not None:
            run_state.restore_fixed_points(self.fixed_points, path, self.device, self.log.note)
        if self.average is not None:
            require(meta, "average", where=where)
            _, averaged, _ = load_checkpoint(path, weights="average")
            self.average.load(averaged, meta["average"], where=where)

    def batches(self, epoch: int | None = None) -> Batches:
        """The batches of ``epoch`` (default: the current one) for this process."""
        cfg = self.config
        return Batches(
            self.train_set,
            cfg.batch_size,
            shuffle=True,
            augment=cfg.augmentation(self.train_set.info),
            seed=cfg.seed,
            epoch=self.epoch if epoch is None else epoch,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
            device=self.device,
        )

    # -- the loop -------------------------------------------------------------------------
    def fit(self, stop_after_batches: int | None = None) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` or until the time budget is spent.

        Raises :class:`~mondeq.errors.TrainingInterrupted` after saving when SIGINT or SIGTERM
        arrives. ``stop_after_batches`` stops (after saving, without raising) once that many batches
        ran in this call, to simulate an interruption.
        """
        self._batches_left = math.inf if stop_after_batches is None else stop_after_batches
        self.folder.acquire()
        if self.fixed_points is not None:
            self.log.note(self.fixed_points.describe())
        self.budget.start()
        self.log.open()
        failed = True
        try:
            # Solves stopped at their cap are counted per epoch (capped_steps) instead of warned about per step.
            with StopRequests(announce=distributed.is_main()) as stops, ignore_convergence_warnings():
                self._epochs(stops)
            failed = False
        except TrainingInterrupted:
            failed = False  # saved
            raise
        except DivergenceError as error:
            raise DivergenceError(f"{error}; {self.folder.last_checkpoint()}") from error
        finally:
            self.budget.stop()
            self.log.close()
            self.folder.release(failed)
        return self.log.history

    def _epochs(self, stops: StopRequests) -> None:
        while self.epoch < self.config.epochs:
            if self._out_of_time():  # at an epoch's end: nothing left to train
                self._refuse_untrained_budget()
                self._spend_budget(stops)
                return
            start = time.perf_counter()
            stopped, num_batches = self._train_epoch(stops)
            if stopped is StopReason.BATCHES:
                self.save(stopping=True)
                return
            if stopped is StopReason.TIME and self.batch == 0:  # out of time before this epoch's first batch
                self._spend_budget(stops)
                return
            if stopped is StopReason.TIME:
                self.budget.spend()  # saved with the row below
            row = self._end_epoch(num_batches, time.perf_counter() - start, stops, complete=stopped is None)
            self.log.record(row)

    def _train_epoch(self, stops: StopRequests) -> tuple[StopReason | None, int]:
        """Train the rest of the current epoch: why it stopped early (``None``: it is complete) and
        the epoch's batch count."""
        batches = self.batches()
        bar = None
        try:
            for index, (x, y) in enumerate(batches):
                if index < self.batch:
                    continue  # done before a resume (the batches are drawn all the same: augmentation's random state)
                if bar is None:  # from here: the skipped batches' time is no part of the rate, nor of the first ETA
                    bar = self.log.bar(len(batches), self.batch, f"epoch {self.epoch + 1}/{self.config.epochs}")
                if self._batches_left <= 0:
                    return StopReason.BATCHES, len(batches)
                self._between_batches(stops)
                if self._out_of_time():
                    self._refuse_untrained_budget()
                    return StopReason.TIME, len(batches)
                self._train_step(x, y, index, len(batches), batches.indices(index))
                self.batch = index + 1
                self._batches_left -= 1
                self.log.show(bar, self.running, self.batch, self.model.layer.alpha)
        finally:
            if bar is not None:
                bar.close()
        self._between_batches(stops)
        return None, len(batches)

    def _between_batches(self, stops: StopRequests) -> None:
        """Honour a stop request, or write the periodic checkpoint when it is due."""
        if stops.requested():
            self.save(stopping=True)
            raise TrainingInterrupted(stops.signum or signal.SIGTERM)
        every = self.config.checkpoint_every
        if every and self.clock() - self._last_save >= 60 * every:
            self.save()

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, index: int, num_batches: int, examples: torch.Tensor) -> None:
        cfg, model = self.config, self.model
        where = f"epoch {self.epoch + 1}, batch {index + 1}"
        loss_value, logits = train_step(
            model,
            self.optimizer,
            cfg,
            x,
            y,
            self.objective,
            self.epoch + index / num_batches,
            self._progress(index, num_batches),
            tune=tunes_alpha(cfg, index, num_batches),
            share=distributed.broadcast_float,
            forward=self.wrapped,
            store=self.fixed_points,
            examples=examples,
            check_loss=lambda value: distributed.check_finite(value, f"the training loss of {where}"),
        )
        distributed.check_finite(self._parameters_finite(), f"a parameter after the update of {where}")
        if self.average is not None:
            self.average.update(model, self._progress(index + 1, num_batches))
        stats = model.layer.stats
        capped = not stats.forward.converged or (stats.backward is not None and not stats.backward.converged)
        self.running.add(
            loss=loss_value * len(y),
            correct=(logits.argmax(1) == y).sum().item(),
            examples=len(y),
            forward_iterations=stats.forward.iterations,
            backward_iterations=stats.backward.iterations if stats.backward else 0,
            forward_seconds=stats.forward.seconds,
            backward_seconds=stats.backward.seconds if stats.backward else 0.0,
            capped_steps=float(capped),
        )
        self._watch_stall(capped, num_batches)

    def _parameters_finite(self) -> float:
        """0 when every parameter is finite, NaN otherwise (one host synchronisation)."""
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        return 0.0 if bool(finite) else math.nan

    def _watch_stall(self, capped: bool, num_batches: int) -> None:
        """Count steps in a row at the iteration cap; at :data:`STALL_STEPS` (or a whole epoch of
        fewer steps) say once that the run is stalling, or stop it with ``strict``."""
        self._capped_streak = self._capped_streak + 1 if capped else 0
        if self._capped_streak != min(STALL_STEPS, num_batches):
            return
        layer = self.model.layer
        message = (
            f"the solver has stopped at its iteration cap ({layer.forward_options.max_iter}) in {self._capped_streak} "
            f"training steps in a row (epoch {self.epoch + 1}): the run is diverging or the tolerance "
            f"({layer.forward_options.tol:g}) is out of reach; a smaller --lr or a larger --max-iter helps"
        )
        if self.config.strict:
            raise DivergenceError(f"training stopped (--strict): {message}")
        self.log.note(f"warning: {message} (--strict stops such a run)", within_epoch=True)

    # -- time -----------------------------------------------------------------------------
    def elapsed_seconds(self) -> float:
        """Wall time this run has spent so far, across resumptions."""
        return self.budget.seconds()

    def _out_of_time(self) -> bool:
        r = self.running  # before the first evaluation: its time from the forward solves' time per image
        estimate = 1.5 * r.forward_seconds / r.examples * len(self.test_set) if r.examples else 0.0
        return self.budget.exhausted(estimate)

    def _progress(self, index: int, num_batches: int) -> float:
        """The fraction of the run done: of the time budget, or of the epochs."""
        if self.config.time_budget is None:
            return (self.epoch + index / num_batches) / self.config.epochs
        return self.budget.fraction()

    def _refuse_untrained_budget(self) -> None:
        """A :class:`~mondeq.errors.ConfigError` when the time budget ran out before the run's first batch."""
        if self.history or self.epoch or self.batch:
            return
        raise ConfigError(
            f"the time budget ({60 * self.config.time_budget:.3g} s) ran out before the first training batch; "
            "nothing was trained: give a longer --time-budget"
        )

    def _spend_budget(self, stops: StopRequests) -> None:
        """Record (and save, once) that the run is out of its time budget between epochs, unless
        already recorded; the last epoch is evaluated first if it was not (``eval_every`` skipped
        it), so that a run always ends with its test accuracy."""
        evaluated = self._evaluate_last_row(stops)
        if evaluated or self.budget.spent != self.config.time_budget:
            self.budget.spend()
            self.save()
        if evaluated:
            self.log.write()
            self.log.evaluation_line(self.log.history[-1])

    # -- the end of an epoch --------------------------------------------------------------
    def _end_epoch(self, num_batches: int, seconds: float, stops: StopRequests, complete: bool = True) -> dict[str, Any]:
        """Evaluate, then advance epoch, position, totals and history together and save.

        An incomplete epoch (the time budget ran out) is recorded as a fractional epoch and
        leaves the position inside it, so that a resumed run with more time continues there.
        """
        cfg = self.config
        totals = self.running.summed_over_ranks()
        evaluation = self._evaluate(stops) if self._evaluation_due(complete) else None
        batches = max(num_batches if complete else self.batch, 1) * distributed.world_size()
        row = {
            "epoch": self.epoch + 1 if complete else round(self.epoch + self.batch / num_batches, 3),
            "train_loss": totals.loss / totals.examples,
            "train_accuracy": totals.correct / totals.examples,
            "test_loss": None if evaluation is None else evaluation.loss,
            "test_accuracy": None if evaluation is None else evaluation.accuracy,
            "forward_iterations": totals.forward_iterations / batches,
            "backward_iterations": totals.backward_iterations / batches,
            "forward_seconds": totals.forward_seconds / batches,
            "backward_seconds": totals.backward_seconds / batches,
            "epoch_seconds": seconds,
            "alpha": self.model.layer.alpha,
            "lr": self.optimizer.param_groups[0]["lr"],
            "elapsed_seconds": self.elapsed_seconds(),
            "capped_steps": int(totals.capped_steps),
        }
        if complete:
            self.log.history, self.epoch, self.batch = [*self.log.history, row], self.epoch + 1, 0
            self.running = RunningTotals()
        else:
            self.log.history = [*self.log.history, row]
        self.save()
        self.log.write()
        of = f"/{cfg.epochs}" if cfg.time_budget is None else f" (time budget {cfg.time_budget:.4g} min)"
        self.log.epoch_line(row, of, seconds, batches)
        return row

    def _evaluation_due(self, complete: bool) -> bool:
        """Whether the epoch ending now is evaluated: every ``eval_every`` epochs, and always the
        last one (the epoch count reached, or the time budget spent)."""
        every, ended = self.config.eval_every, self.epoch + 1
        return not complete or ended >= self.config.epochs or self._out_of_time() or (every > 0 and ended % every == 0)

    def evaluated_model(self) -> torch.nn.Module:
        """What the test set measures: the averaged weights once they average a step, else the trained ones."""
        return self.average.evaluated(self.model) if self.average is not None else self.model

    def _evaluate(self, stops: StopRequests) -> EvalResult:
        """The test set's loss and accuracy; a stop request during it saves and raises (the
        position stays "all batches of the epoch done")."""
        model, batch_size = self.evaluated_model(), self.config.test_batch_size
        evaluation = evaluate(model, self.test_set, batch_size, self.device, stop=stops.requested)
        if evaluation is None:
            self.save(stopping=True)
            raise TrainingInterrupted(stops.signum or signal.SIGTERM)
        self.budget.evaluation_seconds = evaluation.seconds
        distributed.check_finite(evaluation.loss, f"the test loss after epoch {self.epoch + 1}")
        return evaluation

    def _evaluate_last_row(self, stops: StopRequests) -> bool:
        """Fill in the test loss and accuracy of the last recorded epoch if it was not evaluated;
        whether it did."""
        if not self.history or self.history[-1]["test_accuracy"] is not None:
            return False
        evaluation = self._evaluate(stops)
        last = {**self.log.history[-1], "test_loss": evaluation.loss, "test_accuracy": evaluation.accuracy}
        self.log.history = [*self.log.history[:-1], last]
        return True
