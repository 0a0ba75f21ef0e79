"""A run is never lost: one writer per run folder, a finished run is never overwritten, a diverging
run stops with its last good checkpoint, and every checkpoint entry is checked against a schema."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from datafiles import write_mnist_like
from helpers import run_config
from mondeq import MonDEQ
from mondeq.checkpoint import FORMAT_SCHEMA, load_checkpoint
from mondeq.cli import main
from mondeq.data import load_dataset
from mondeq.data.dataset import DATA_SCHEMA
from mondeq.errors import CheckpointError, ConfigError, DivergenceError
from mondeq.files import RunLock
from mondeq.models import load_model
from mondeq.operators import FullyConnected
from mondeq.train import RECIPES, STALL_STEPS, TrainConfig, Trainer
from mondeq.train.budget import TimeBudget
from mondeq.train.metrics import MetricsLog, RunningTotals
from mondeq.train.run_state import POSITION_SCHEMA
from mondeq.validation import check_entries


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_mnist_like(tmp_path_factory.mktemp("fashion"), train=64, test=16)


@pytest.fixture(scope="module")
def data(folder):
    return load_dataset("fashion-mnist", "train", folder), load_dataset("fashion-mnist", "test", folder)


#: One epoch of the fc model (helpers.run_config).
config = run_config


def run_files(run):
    """Every file of a run folder and its bytes (the lock file aside)."""
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


def cli(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit:
        return exit.code


# -- a finished run is never overwritten ------------------------------------------------------
def test_training_twice_into_one_folder_keeps_the_first_run(tmp_path, folder, capsys):
    run = tmp_path / "run"
    common = ["train", "--data-dir", folder, "--model", "fc", "--width", "8", "--out", run, "--no-progress"]
    assert cli(*common) == 0
    first = run_files(run)
    assert cli(*common, "--lr", "0.5") == 2  # same folder, other options
    assert cli(*common) == 2  # same options
    err = capsys.readouterr().err
    assert f"{run} already holds a run; continue it with `mondeq train --resume {run}`" in err and "--overwrite" in err
    assert run_files(run) == first


def test_overwrite_replaces_a_run_and_its_outputs(tmp_path, folder):
    run = tmp_path / "run"
    common = ["train", "--data-dir", folder, "--model", "fc", "--width", "8", "--out", run, "--no-progress"]
    assert cli(*common) == 0
    old_tensors = load_checkpoint(run)[0]["tensors"]
    (run / "certify.json").write_text("{}")  # an output of the old run
    assert cli(*common, "--overwrite", "--width", "6", "--epochs", "2") == 0
    meta, state, _ = load_checkpoint(run)
    assert meta["model"]["width"] == 6 and meta["epoch"] == 2 and state["layer.linear.A"].shape == (6, 6)
    assert not (run / old_tensors).exists() and not (run / "certify.json").exists()
    assert (run / "metrics.csv").read_text().count("\n") == 3


def test_resume_and_overwrite_exclude_each_other(tmp_path, folder, capsys):
    assert cli("train", "--data-dir", folder, "--resume", tmp_path, "--overwrite") == 2
    assert "give one of them" in capsys.readouterr().err


# -- one writer per folder ------------------------------------------------------------------------
def test_a_second_trainer_on_a_folder_in_use_is_refused_and_the_run_stays_intact(tmp_path, data):
    run = tmp_path / "run"
    first = Trainer(config(run, epochs=2), *data, progress=False)
    with pytest.raises(OSError, match=f"run folder {run} is in use by another mondeq process"):
        Trainer(config(run), *data, progress=False)  # nothing saved yet, but the first trainer holds the folder
    first.fit()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(config(run), *data, progress=False)
    intact = run_files(run)
    with RunLock(run):  # another process training there
        with pytest.raises(OSError, match=f"run folder {run} is in use by another mondeq process \\(pid {os.getpid()}\\)"):
            Trainer.resume_run(run, {"epochs": 3}, train_set=data[0], test_set=data[1], progress=False)
        model, meta = load_model(run)  # readers take no lock
        assert meta["epoch"] == 2
    assert run_files(run) == intact
    assert len(Trainer.resume_run(run, {"epochs": 3}, train_set=data[0], test_set=data[1], progress=False).fit()) == 3


def test_the_lock_is_released_on_every_exit(tmp_path, data):
    run = tmp_path / "run"
    trainer = Trainer(config(run), *data, progress=False)
    trainer.fit()
    assert RunLock(run).acquire().held  # released by fit
    broken = Trainer.resume_run(run, {"epochs": 2}, train_set=data[0], test_set=data[1], progress=False)
    broken.optimizer.step = lambda: next(broken.model.parameters()).data.fill_(math.nan)
    with pytest.raises(DivergenceError):
        broken.fit()
    RunLock(run).acquire().release()  # released after the failure too


LOCK_AND_DIE = """
import os, sys, time
from mondeq.files import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path, data):
    run = tmp_path / "run"
    Trainer(config(run), *data, progress=False).fit()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_AND_DIE, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OSError, match=f"pid {holder.pid}"):
        RunLock(run).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run / ".lock").read_text().strip() == str(holder.pid)  # the stale file is still there ...
    resumed = Trainer.resume_run(run, {"epochs": 2}, train_set=data[0], test_set=data[1], progress=False)
    assert len(resumed.fit()) == 2  # ... and does not stop the next run


def test_two_trainings_started_together_on_one_folder(tmp_path, folder):
    """Two processes: one trains, the other is refused in one line; the run is whole."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "mondeq", "train", "--data-dir", str(folder), "--model", "fc", "--out", str(run)]
    command += ["--width", "8", "--epochs", "3", "--no-progress", "--threads", "1"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and ("is in use by another mondeq process" in refused[0] or "already holds a run" in refused[0])
    meta, _, _ = load_checkpoint(run)
    assert meta["epoch"] == 3 and len(meta["history"]) == 3


# -- a failing command leaves nothing behind ------------------------------------------------------
def test_a_run_that_fails_before_saving_leaves_no_folder(tmp_path, data, folder, capsys):
    run = tmp_path / "new" / "run"
    with pytest.raises(ConfigError, match="ran out before the first training batch"):
        Trainer(config(run, time_budget=1e-9), *data, progress=False).fit()
    assert not run.exists()
    assert cli("plot", tmp_path / "missing") == 2 and not (tmp_path / "missing").exists()
    assert cli("certify", tmp_path / "missing", "--out", tmp_path / "no" / "c.json") == 2
    assert not (tmp_path / "no").exists()


# -- a run that diverges stops, keeping its last good checkpoint ------------------------------------
def test_a_diverging_run_stops_and_its_last_good_checkpoint_loads(tmp_path, data):
    run = tmp_path / "run"
    trainer = Trainer(config(run, epochs=3), *data, progress=False)
    steps = [0]
    step = trainer.optimizer.step

    def poisoning_step():  # the 6th update (epoch 2, batch 2) overflows
        step()
        steps[0] += 1
        if steps[0] == 6:
            next(trainer.model.parameters()).data[0] = math.inf

    trainer.optimizer.step = poisoning_step
    with pytest.raises(DivergenceError, match=r"a parameter after the update of epoch 2, batch 2 is not finite; the last"):
        trainer.fit()
    meta, state, _ = load_checkpoint(run)
    assert (meta["epoch"], meta["batch"], len(meta["history"])) == (1, 0, 1)
    model, _ = load_model(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    resumed = Trainer.resume_run(run, train_set=data[0], test_set=data[1], progress=False)
    assert len(resumed.fit()) == 3  # resumable from there


def test_a_non_finite_loss_stops_the_command_in_one_line(tmp_path, folder, capsys):
    code = cli(
        "train", "--data-dir", folder, "--model", "fc", "--lr", "1e30", "--epochs", "3", "--out", tmp_path / "r", "--no-progress"
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("mondeq train: error: training diverged:"), err


def test_steps_at_the_iteration_cap_are_counted_and_strict_stops_a_stalled_run(tmp_path, data, capsys):
    capped = config(tmp_path / "capped", epochs=2, model_options={"max_iter": 2, "tol": 1e-6})
    history = Trainer(capped, *data, progress=False).fit()
    assert [row["capped_steps"] for row in history] == [4, 4]  # 64 images in batches of 16: every step capped
    assert "4 of 4 steps stopped at the iteration cap" in capsys.readouterr().out
    metrics = (tmp_path / "capped" / "metrics.csv").read_text().splitlines()
    assert metrics[0].endswith("capped_steps") and metrics[1].endswith(",4")
    strict = config(tmp_path / "strict", epochs=2, strict=True, model_options={"max_iter": 2, "tol": 1e-6})
    with pytest.raises(DivergenceError, match="training stopped \\(--strict\\): the solver has stopped at its iteration cap"):
        Trainer(strict, *data, progress=False).fit()
    converging = Trainer(config(tmp_path / "fine", epochs=1, strict=True), *data, progress=False).fit()
    assert converging[0]["capped_steps"] == 0


def test_a_stall_is_said_once_on_stderr(tmp_path, data, capsys):
    many = config(tmp_path / "run", batch_size=2, model_options={"max_iter": 1, "tol": 1e-6})  # 32 capped steps
    Trainer(many, *data, progress=False).fit()
    err = capsys.readouterr().err
    assert err.count(f"in {STALL_STEPS} training steps in a row") == 1 and "--strict stops such a run" in err


def test_non_finite_weights_are_refused_by_the_layer():
    layer = MonDEQ(FullyConnected(5, 4, m=0.5))
    layer.linear.A.data.fill_(math.nan)
    with pytest.raises(ValueError, match="parameter 'A' of the FullyConnected operator holds NaN or Inf"):
        layer(torch.randn(2, 5))
    layer.linear.A.data.fill_(0.1)
    layer.linear.U.bias.data[0] = math.inf
    with pytest.raises(ValueError, match="'U.bias'"):
        layer(torch.randn(2, 5))


# -- options that used to pass silently -----------------------------------------------------------
@pytest.mark.parametrize(
    "options, match",
    [
        ({"seed": 2**64}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"out": ""}, "must not be empty"),
        ({"tune_alpha": False, "max_alpha": 0.5}, "does nothing with tune_alpha off"),
        ({"lr_schedule": "constant", "lr_step": 3}, "does nothing with lr_schedule 'constant'"),
        ({"model_options": {"m": 1e-300}}, "below the resolution of torch.float32"),
        ({"model_options": {"tol": 1.0}}, r"tol must be a number in \(0, 1\)"),
        ({"model": "single-conv", "model_options": {"channels": [4], "pool": 5}}, "pool 5 must divide the equilibrium's side 28"),
        ({"model_options": {"pool": 2}}, "pool 2 applies to single-conv, not fc"),
        ({"model_options": {"channels": [4]}}, "applies to the convolutional models, not fc"),
        ({"device": "cpu:5"}, "there is one CPU device"),
        ({"certified_ramp": 2.0}, "certified_ramp schedules the certified radius; it does nothing with certified unset"),
        (
            {"model_options": {"phantom_steps": 3}},
            "phantom_steps sets --gradient phantom; it does nothing with gradient 'implicit'",
        ),
        ({"average": "swa:1.5"}, "SWA's start is a fraction of the run"),
    ],
)
def test_options_that_cannot_work_are_refused(tmp_path, data, options, match):
    options = {"out": tmp_path / "run", **options}
    with pytest.raises(ConfigError, match=match):
        Trainer(config(**options), *data, progress=False)
    assert not (tmp_path / "run").exists()


def test_the_largest_seed_trains(tmp_path, data):
    assert len(Trainer(config(tmp_path / "run", seed=2**64 - 1), *data, progress=False).fit()) == 1


def test_a_recipe_keeps_only_the_model_options_of_the_model_asked_for():
    recipe = RECIPES["fmnist-hour"]
    multi = recipe.options({"model": "multi-conv"})["model_options"]
    assert "pool" not in multi and multi["channels"] == [60] and multi["m"] == 0.5
    fc = recipe.options({"model": "fc", "model_options": {"width": 50}})["model_options"]
    assert fc == {"width": 50, "m": 0.5, "tol": 3e-2}
    assert recipe.options({})["model_options"]["pool"] == 2


# -- every checkpoint entry against the schema of the part that owns it ----------------------------
#: Each entry of a run's checkpoint, checked by the part that writes it (the format checks its own).
SCHEMAS = {**POSITION_SCHEMA, **TimeBudget.SCHEMA, **RunningTotals.SCHEMA, **MetricsLog.SCHEMA, **DATA_SCHEMA, **FORMAT_SCHEMA}
#: The entries the format writes and reads itself.
FORMAT_ENTRIES = {"format", "tensors", "tensors_sha256", "optimizer"}
BAD_ENTRIES = [
    ("epoch", [-1, 10**18, "one", 1.5, True, None]),
    ("batch", [-1, 10**10, "3", 2.5]),
    ("world_size", [0, -2, "2"]),
    ("alpha", [0, -1, math.inf, "1"]),
    ("elapsed", [-1.0, math.nan, "0"]),
    ("budget_spent", [0, -5, "59"]),
    ("evaluation_seconds", [-1, "3"]),
    ("running", [{"examples": -5}, {"loss": math.inf}, [1, -1], "none", {"loss": "1"}]),
    ("history", [{"epoch": 1}, [{"epoch": -1}], [{"train_loss": 1.0}], [{"epoch": 1, "lr": "high"}], [3]]),
    (
        "data",
        [
            {"name": "d", "channels": 1, "image_size": 28, "classes": ["a", "b"], "mean": [0.5], "std": [0]},
            {"name": "d", "channels": 1, "image_size": 28, "classes": [], "mean": [0.5], "std": [0.5]},
            {"name": "d", "channels": 1, "image_size": 0, "classes": ["a", "b"], "mean": [0.5], "std": [0.5]},
            {"name": "d", "channels": 2, "image_size": 28, "classes": ["a", "b"], "mean": [0.5] * 2, "std": [0.5] * 2},
            {"name": "d", "channels": 3, "image_size": 28, "classes": ["a", "b"], "mean": [0.5], "std": [0.5]},
            {"name": 3, "channels": 1, "image_size": 28, "classes": ["a", "b"], "mean": [0.5], "std": [0.5]},
            {"name": "d", "channels": 1, "image_size": 28, "classes": ["a", "b"], "mean": [0.5], "std": [0.5], "x": 1},
            {"channels": 1, "image_size": 28, "classes": ["a", "b"], "mean": [0.5], "std": [0.5]},
            "fashion-mnist",
        ],
    ),
    ("model", ["fc", [1]]),
    ("attachments", [["fixed-points"], {"fixed-points": 3}, "x"]),
    ("train", ["fc", None]),
    ("average", ["ema", {"spec": "ema:0.9"}, {"spec": "ema:0.9", "updates": -1}, {"spec": 1, "updates": 3}]),
]


def test_the_schemas_name_every_entry():
    assert {key for key, _ in BAD_ENTRIES} == set(SCHEMAS)


@pytest.mark.parametrize("key, values", BAD_ENTRIES, ids=[key for key, _ in BAD_ENTRIES])
def test_each_checkpoint_entry_is_checked(key, values):
    for value in values:
        with pytest.raises(CheckpointError, match=f"checkpoint: entry '{key}' must be"):
            check_entries({key: value}, SCHEMAS)


def test_a_checkpoint_of_a_real_run_passes_the_schemas_and_edits_are_refused_where_read(tmp_path, data):
    run = tmp_path / "run"
    Trainer(config(run, epochs=2, eval_every=0, time_budget=None), *data, progress=False).fit()
    meta, _, _ = load_checkpoint(run)
    assert set(meta) <= set(SCHEMAS) | FORMAT_ENTRIES
    check_entries(meta, SCHEMAS)
    budget, totals, log = TimeBudget(None, time.monotonic), RunningTotals(), MetricsLog(tmp_path, False)
    for part in (budget, totals, log):  # each part takes back what it wrote
        part.load_state_dict(meta)
        assert part.state_dict().items() <= meta.items()

    def resume_edited(**entries):
        (run / "checkpoint.json").write_text(json.dumps({**meta, **entries}))
        Trainer.resume_run(run, {"epochs": 3}, progress=False, train_set=data[0], test_set=data[1])

    with pytest.raises(CheckpointError, match="entry 'epoch' is 3, beyond the run's 2 epochs"):
        resume_edited(epoch=3)
    with pytest.raises(CheckpointError, match="entry 'running'"):
        resume_edited(running={**meta["running"], "examples": -5})
    with pytest.raises(CheckpointError, match="entry 'elapsed'"):
        resume_edited(elapsed=-1)
    with pytest.raises(CheckpointError, match="entry 'history'"):
        resume_edited(history=[{"epoch": "one"}])
    assert load_model(run)[0] is not None  # reading the model needs none of them
    (run / "checkpoint.json").write_text(json.dumps({**meta, "data": {**meta["data"], "std": [0.0]}}))
    with pytest.raises(CheckpointError, match="entry 'data'"):
        load_model(run)


def test_a_tensors_file_that_is_not_a_regular_file_is_refused_without_reading_it(tmp_path, data):
    run = tmp_path / "run"
    Trainer(config(run), *data, progress=False).fit()
    tensors = run / load_checkpoint(run)[0]["tensors"]
    tensors.unlink()
    tensors.symlink_to("/dev/zero")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="is not a regular file"):
        load_model(run)
    assert time.perf_counter() - start < 5


def test_a_failed_run_removes_the_folders_it_created_and_nothing_else(tmp_path):
    from mondeq.train.run_folder import RunFolder

    folder = RunFolder(tmp_path / "runs" / "deep" / "fc")
    folder.claim("refuse")
    (tmp_path / "runs" / "other").mkdir()  # another run's folder, made meanwhile
    folder.release(failed=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["other", "runs"]
    alone = RunFolder(tmp_path / "new" / "fc")
    alone.claim("refuse")
    alone.release(failed=True)
    assert not (tmp_path / "new").exists() and (tmp_path / "runs" / "other").is_dir()


def test_every_declared_relation_names_an_option_of_its_class():
    from dataclasses import fields

    from mondeq.models import ModelConfig
    from mondeq.validation import Requires, options_of

    for cls in (TrainConfig, ModelConfig):
        names = {f.name for f in fields(cls)}
        rules = [f.metadata["requires"] for f in options_of(cls) if "requires" in f.metadata]
        assert rules and all(isinstance(rule, Requires) and rule.other in names for rule in rules), cls
        kinds = [f.metadata["kinds"] for f in options_of(cls) if "kinds" in f.metadata]
        assert cls is TrainConfig or all(set(k) <= {"fc", "single-conv", "multi-conv"} for k, _ in kinds)
