"""Nothing lost, nothing silent: crash-safe checkpoints, exact resume after signals, safe outputs."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import torch

from datafiles import fashion_like
from helpers import run_config
from mondeq.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
from mondeq.errors import CheckpointError, OutputError, TrainingInterrupted
from mondeq.files import output_dir, write_atomic
from mondeq.train import Trainer

TIMING = {"forward_seconds", "backward_seconds", "epoch_seconds", "elapsed_seconds"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fashion_like(tmp_path_factory.mktemp("fashion"), train=80, test=24)[:2]


def config(out, model="fc", **kw):
    sizes = {"width": 10} if model == "fc" else {"channels": [3]}
    options = {**sizes, **kw.pop("model_options", {}), "tol": 1e-4, "max_iter": 100}
    return run_config(out, model, model_options=options, **{"epochs": 2, "test_batch_size": 8, "lr": 3e-3, **kw})


def without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """Parameters and history of uninterrupted runs, per model kind."""
    results = {}
    for model in ("fc", "single-conv"):
        trainer = Trainer(config(tmp_path_factory.mktemp(f"full-{model}"), model), *data, progress=False)
        history = trainer.fit()
        results[model] = ({k: v.clone() for k, v in trainer.model.state_dict().items()}, without_timing(history))
    return results


def resume_and_compare(out, data, uninterrupted, model="fc"):
    resumed = Trainer.resume_run(out, train_set=data[0], test_set=data[1], progress=False)
    history = resumed.fit()
    state, expected = uninterrupted[model]
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert without_timing(history) == expected
    assert (out / "metrics.csv").read_text().count("\n") == len(expected) + 1


def send_after(function, signum, *, call=1):
    """``function`` wrapped to deliver ``signum`` to this process right after its ``call``-th call."""
    calls = [0]

    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signum)
        return result

    return wrapped


# -- signals at the three windows of the issue, and SIGTERM mid-epoch ------------------------
def test_sigint_right_after_optimizer_step(tmp_path, data, uninterrupted):
    trainer = Trainer(config(tmp_path), *data, progress=False)
    trainer.optimizer.step = send_after(trainer.optimizer.step, signal.SIGINT, call=3)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert stop.value.signal == signal.SIGINT
    meta, _, _ = load_checkpoint(tmp_path)
    assert (meta["epoch"], meta["batch"]) == (0, 3)  # the third step is kept exactly once
    resume_and_compare(tmp_path, data, uninterrupted)


def test_sigint_inside_adams_parameter_loop(tmp_path, data, uninterrupted, monkeypatch):
    trainer = Trainer(config(tmp_path), *data, progress=False)
    step = trainer.optimizer.step
    inside = {"step": 0}

    def counted_step(*args, **kwargs):
        inside["step"] += 1
        try:
            return step(*args, **kwargs)
        finally:
            inside["step"] -= 1

    trainer.optimizer.step = counted_step
    original = torch.Tensor.addcdiv_
    per_step = len(list(trainer.model.parameters()))
    calls = [0]

    def addcdiv_(self, *args, **kwargs):  # Adam's update of one parameter tensor
        result = original(self, *args, **kwargs)
        if inside["step"]:
            calls[0] += 1
            if calls[0] == 2 * per_step + 2:  # third step, after its second parameter
                os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(torch.Tensor, "addcdiv_", addcdiv_)
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    monkeypatch.undo()
    assert calls[0] == 3 * per_step  # the step ran to its end
    meta, _, _ = load_checkpoint(tmp_path)
    assert (meta["epoch"], meta["batch"]) == (0, 3)
    resume_and_compare(tmp_path, data, uninterrupted)


@pytest.mark.parametrize("where", ["write", "evaluate"])
def test_sigint_during_epoch_end_bookkeeping(tmp_path, data, uninterrupted, monkeypatch, where):
    trainer = Trainer(config(tmp_path), *data, progress=False)
    if where == "write":  # metrics.csv: after the epoch has advanced, before the loop moves on
        trainer.log.write = send_after(trainer.log.write, signal.SIGINT)
    else:  # during the first evaluation, after its first batch
        model_forward = trainer.model.forward

        def forward(x):
            out = model_forward(x)
            if not trainer.model.training and trainer.batch == 5:
                os.kill(os.getpid(), signal.SIGINT)
            return out

        monkeypatch.setattr(trainer.model, "forward", forward)
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    meta, _, _ = load_checkpoint(tmp_path)
    expected = (1, 0) if where == "write" else (0, 5)  # epoch finished / all batches done, not evaluated
    assert (meta["epoch"], meta["batch"]) == expected
    resume_and_compare(tmp_path, data, uninterrupted)


def test_sigterm_mid_epoch_single_conv(tmp_path, data, uninterrupted):
    trainer = Trainer(config(tmp_path, "single-conv"), *data, progress=False)
    trainer.optimizer.step = send_after(trainer.optimizer.step, signal.SIGTERM, call=7)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert stop.value.signal == signal.SIGTERM
    meta, _, _ = load_checkpoint(tmp_path)
    assert (meta["epoch"], meta["batch"]) == (1, 2)
    resume_and_compare(tmp_path, data, uninterrupted, "single-conv")


def test_signal_handlers_are_restored(tmp_path, data):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    Trainer(config(tmp_path, epochs=1), *data, progress=False).fit()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_periodic_checkpoints_inside_an_epoch(tmp_path, data, monkeypatch):
    import mondeq.train.run_folder as train_module

    positions = []
    original = train_module.save_checkpoint

    def recording(path, model, optimizer, meta, *rest):
        positions.append((meta["epoch"], meta["batch"]))
        return original(path, model, optimizer, meta, *rest)

    monkeypatch.setattr(train_module, "save_checkpoint", recording)
    Trainer(config(tmp_path, epochs=1, checkpoint_every=1e-9), *data, progress=False).fit()
    assert positions[:5] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]  # before every batch
    assert positions[-1] == (1, 0)
    positions.clear()
    Trainer(config(tmp_path / "default", epochs=1), *data, progress=False).fit()
    assert positions == [(1, 0)]  # the default (10 minutes) is not due in a short run


# -- crash-safe saving -----------------------------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((64, 64), value))


def _save(folder, value):
    return save_checkpoint(folder / "checkpoint", _Tiny(value), None, {"value": value})


def _crash_on_write_step(folder, value, step) -> int:
    """Run a save in a child process that dies (like ``kill -9``) at its ``step``-th file-system write; exit code."""
    pid = os.fork()
    if pid == 0:  # child
        calls = [0]

        def dying(function):
            def wrapped(*args, **kwargs):
                calls[0] += 1
                if calls[0] == step:
                    os._exit(17)
                return function(*args, **kwargs)

            return wrapped

        for name in ("write", "fsync", "replace", "unlink", "rename"):
            setattr(os, name, dying(getattr(os, name)))
        try:
            _save(folder, value)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_crash_at_every_write_step_leaves_a_loadable_checkpoint(tmp_path):
    _save(tmp_path, 1.0)
    crashed = 0
    for step in range(1, 100):
        code = _crash_on_write_step(tmp_path, 2.0 + step, step)
        meta, state, _ = load_checkpoint(tmp_path)  # never neither: the old checkpoint or the new one
        assert meta["value"] in (1.0, 2.0 + step)
        assert torch.all(state["weight"] == meta["value"])
        if code == 0:
            break
        assert code == 17
        crashed += 1
        _save(tmp_path, 1.0)
    assert crashed >= 5  # tensors write + fsync + rename, JSON write + fsync + rename, removals...
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint-" + load_checkpoint(tmp_path)[0]["tensors_sha256"][:16] + ".safetensors", "checkpoint.json"]


def test_the_json_write_killing_the_process_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1.0)
    pid = os.fork()
    if pid == 0:
        import mondeq.checkpoint as checkpoint

        original = checkpoint.write_atomic

        def write(path, data):
            if str(path).endswith(".json"):
                os._exit(9)
            return original(path, data)

        checkpoint.write_atomic = write
        try:
            _save(tmp_path, 2.0)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    meta, state, _ = load_checkpoint(tmp_path)
    assert meta["value"] == 1.0 and torch.all(state["weight"] == 1.0)
    _save(tmp_path, 3.0)  # the next save removes the orphaned tensors file
    assert len(list(tmp_path.glob("checkpoint-*.safetensors"))) == 1


def test_stray_temporary_files_are_removed(tmp_path):
    _save(tmp_path, 1.0)
    (tmp_path / ".checkpoint.json.abc.tmp").write_text("partial")
    (tmp_path / ".checkpoint-0123.safetensors.xyz.tmp").write_bytes(b"partial")
    _save(tmp_path, 2.0)
    assert not list(tmp_path.glob(".*.tmp"))


def test_readers_racing_a_writer_never_see_a_corrupt_checkpoint(tmp_path):
    _save(tmp_path, 0.0)
    errors, loads = [], [0]
    done = threading.Event()

    def read():
        while not done.is_set():
            try:
                meta, state, _ = load_checkpoint(tmp_path)
                assert torch.all(state["weight"] == meta["value"])
                loads[0] += 1
            except CheckpointError as error:
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    for value in range(1, 150):
        _save(tmp_path, float(value))
    done.set()
    reader.join()
    assert loads[0] > 20 and errors == []


def test_checkpoints_written_before_content_addressed_names_still_load(tmp_path):
    """The legacy layout: NAME.safetensors beside NAME.json, no "tensors" entry."""
    from safetensors.torch import save_file

    save_file({"model.weight": torch.ones(3)}, str(tmp_path / "checkpoint.safetensors"))
    digest = __import__("hashlib").sha256((tmp_path / "checkpoint.safetensors").read_bytes()).hexdigest()
    (tmp_path / "checkpoint.json").write_text(json.dumps({"format": 1, "tensors_sha256": digest, "optimizer": None}))
    _, state, _ = load_checkpoint(tmp_path)
    assert torch.equal(state["weight"], torch.ones(3))
    assert checkpoint_paths(tmp_path)[0].name == "checkpoint.safetensors"
    _save(tmp_path, 1.0)  # saving anew replaces the legacy tensors file
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_non_finite_weights_are_refused(tmp_path):
    _save(tmp_path, float("nan"))
    with pytest.raises(CheckpointError, match="NaN or Inf values in weight 'weight'"):
        load_checkpoint(tmp_path)


# -- outputs never follow symlinks -----------------------------------------------------------
def test_outputs_replace_symlinks_instead_of_writing_through(tmp_path, data):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").symlink_to(outside)
    (run / "certify.json").symlink_to(outside)
    Trainer(config(run, epochs=1), *data, progress=False).fit()
    write_atomic(run / "certify.json", "{}")
    assert outside.read_text() == "precious"
    assert not (run / "metrics.csv").is_symlink() and (run / "metrics.csv").read_text().startswith("epoch,")


def test_symlinked_output_folders_are_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "plots").symlink_to(target, target_is_directory=True)
    with pytest.raises(OutputError, match="symbolic link"):
        output_dir(tmp_path / "plots")
    from mondeq.plot import plot_training_curves

    (tmp_path / "metrics.csv").write_text(
        "epoch,train_loss,test_loss,train_accuracy,test_accuracy,forward_iterations,backward_iterations\n1,1,1,0.5,0.5,3,3\n"
    )
    with pytest.raises(OutputError):
        plot_training_curves(tmp_path / "metrics.csv", tmp_path / "plots" / "curves.png")
    assert not list(target.iterdir())


# -- resume refuses what it would otherwise ignore ------------------------------------------
def test_resume_refuses_options_that_change_the_run(tmp_path, data):
    Trainer(config(tmp_path, epochs=1), *data, progress=False).fit()
    with pytest.raises(ValueError, match=r"--lr, --solver would change the stored run"):
        Trainer.resume_run(tmp_path, {"lr": 0.5, "solver": "fb", "epochs": 3}, train_set=data[0], test_set=data[1])
    same = Trainer.resume_run(tmp_path, {"lr": 3e-3, "model": "fc", "epochs": 3}, train_set=data[0], test_set=data[1])
    assert same.config.epochs == 3 and same.epoch == 1


def test_resume_from_a_damaged_checkpoint_is_a_checkpoint_error(tmp_path, data):
    Trainer(config(tmp_path, epochs=1), *data, progress=False).fit()
    meta_path = tmp_path / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    del meta["running"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="lacks the entry 'running'"):
        Trainer.resume_run(tmp_path, train_set=data[0], test_set=data[1])


LEGACY_RESUME = """
import json, sys, shutil, torch
from pathlib import Path
from safetensors.torch import load_file
torch.set_num_threads(1)  # how the legacy run was written: reduction order depends on the thread count
sys.path.insert(0, sys.argv[1])
from datafiles import write_mnist_like
from mondeq.data import load_dataset
from mondeq.train import TrainConfig, Trainer
tmp = Path(sys.argv[2])
folder = write_mnist_like(tmp / "data", train=48, test=16)
train, test = load_dataset("fashion-mnist", "train", folder), load_dataset("fashion-mnist", "test", folder)
legacy = Path(sys.argv[1]) / "data" / "legacy-run"
stored, meta = load_file(legacy / "checkpoint.safetensors"), json.loads((legacy / "checkpoint.json").read_text())
run = shutil.copytree(legacy, tmp / "run")
resumed = Trainer.resume_run(run, train_set=train, test_set=test, progress=False)
weights = {name: value for name, value in resumed.model.state_dict().items()}
moments = [resumed.optimizer.state[p] for group in resumed.optimizer.param_groups for p in group["params"]]
exact = all(torch.equal(value, stored["model." + name]) for name, value in weights.items()) and all(
    torch.equal(state[key], stored[f"optimizer.{i}.{key}"]) for i, state in enumerate(moments) for key in state)
totals = [float(v) for v in vars(resumed.running).values()][: len(meta["running"])]  # capped_steps came later
position = (resumed.epoch, resumed.batch, resumed.model.layer.alpha) == (meta["epoch"], meta["batch"], meta["alpha"])
history = resumed.fit()
options = dict(dataset="fashion-mnist", model="fc", epochs=2, batch_size=16, test_batch_size=8, lr=3e-3)
sizes = {"width": 6, "tol": 1e-4, "max_iter": 100}
full = Trainer(TrainConfig(**options, out=str(tmp / "full"), model_options=sizes), train, test, progress=False)
expected = full.fit()
state, reference = resumed.model.state_dict(), full.model.state_dict()
timing = {"forward_seconds", "backward_seconds", "epoch_seconds", "elapsed_seconds", "capped_steps"}
rows = [[(k, v, row[k]) for k, v in ref.items() if k not in timing] for row, ref in zip(history, expected)]
print(json.dumps({
    "restored_exactly": exact and position and totals == meta["running"],
    "largest_difference": max(float((value - reference[name]).abs().max()) for name, value in state.items()),
    "rows": len(history) == len(expected),
    "rows_close": all(abs(a - b) <= 1e-4 * max(1, abs(a)) for row in rows for _, a, b in row if a is not None),
}))
"""


def test_a_run_written_by_an_older_mondeq_resumes(tmp_path):
    """tests/data/legacy-run: written at 1a33b15 (legacy NAME.safetensors, flat running totals and model
    overrides), stopped mid-epoch. Resumed here, every stored value is restored exactly (weights, Adam's
    moments and steps, position, alpha, running totals) and the run finishes within 1e-5 of an
    uninterrupted run computed here. Not bit for bit: the first batch was computed by the writer's CPU
    kernels, and float32 sums round differently in the last bits on another CPU (AVX2 against AVX-512,
    MKL's own dispatch); bit-identical resume of a run written on the same machine is
    test_train.test_resume_matches_uninterrupted_run.
    Run in a process of its own with one thread: changing torch's thread count back and forth within
    a process breaks later batched solves (torch 2.13)."""
    import subprocess
    import sys
    from pathlib import Path

    command = [sys.executable, "-c", LEGACY_RESUME, str(Path(__file__).parent), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["restored_exactly"] and found["rows"], found
    assert found["largest_difference"] < 1e-5 and found["rows_close"], found


def test_outputs_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "metrics.csv", "epoch\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
