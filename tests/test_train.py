"""Training through the code path of ``mondeq train``: resume matches an uninterrupted run."""

import json

import pytest
import torch

from datafiles import fashion_like
from helpers import run_config
from mondeq.checkpoint import checkpoint_paths, load_checkpoint
from mondeq.errors import CheckpointError
from mondeq.models import ModelConfig, load_model
from mondeq.train import TrainConfig, Trainer, learning_rate


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fashion_like(tmp_path_factory.mktemp("fashion"), train=96, test=40)[:2]


def make_config(out, model="single-conv", **kw):
    options = {"epochs": 2, "test_batch_size": 20, "lr": 3e-3, **kw}
    return run_config(out, model, model_options={"tol": 1e-4, "max_iter": 100}, **options)


REGULARISED = {"weight_decay": 0.1, "label_smoothing": 0.1}  # AdamW's two parameter groups round-trip too


@pytest.mark.parametrize(
    "model, extra", [("fc", {}), ("single-conv", {}), ("multi-conv", {}), ("fc", REGULARISED)], ids=["fc", "sc", "mc", "fc-wd"]
)
def test_resume_matches_uninterrupted_run(tmp_path, data, model, extra):
    train, test = data
    full = Trainer(make_config(tmp_path / "full", model, **extra), train, test, progress=False)
    history = full.fit()
    assert len(history) == 2

    # stop in the middle of epoch 1 (after 9 of 12 batches), then resume in a new trainer
    first = Trainer(make_config(tmp_path / "split", model, **extra), train, test, progress=False)
    first.fit(stop_after_batches=9)
    meta, _, _ = load_checkpoint(tmp_path / "split")
    assert (meta["epoch"], meta["batch"]) == (1, 3)
    resumed = Trainer(make_config(tmp_path / "split", model, **extra), train, test, progress=False, on_existing="resume")
    resumed.resume()
    resumed_history = resumed.fit()

    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.model.layer.alpha == full.model.layer.alpha
    assert resumed_history[-1]["test_accuracy"] == history[-1]["test_accuracy"]
    assert resumed_history[-1]["train_loss"] == pytest.approx(history[-1]["train_loss"], rel=1e-12)


class FakeClock:
    """A clock that advances 10 s per training step and stands still otherwise."""

    def __init__(self, trainer: Trainer) -> None:
        self.now = 1000.0
        step = trainer._train_step

        def timed_step(*args):
            step(*args)
            self.now += 10.0

        trainer._train_step = timed_step
        trainer.clock = lambda: self.now


def test_time_budget_stops_evaluates_saves_and_resumes(tmp_path, data):
    """6 batches per epoch at 10 s each: a 1.5-minute budget ends after 9 steps, half-way through
    epoch 2, with an evaluation recorded as epoch 1.5; resumed with 3 minutes it runs to 180 s."""
    train, test = data
    config = make_config(tmp_path, "fc", epochs=None, time_budget=1.5, lr_schedule="one-cycle")
    assert config.epochs == 1000  # the budget decides
    trainer = Trainer(config, train, test, progress=False)
    clock = FakeClock(trainer)
    history = trainer.fit()
    assert [row["epoch"] for row in history] == [1, 1.5]
    assert [row["elapsed_seconds"] for row in history] == [60.0, 90.0]
    assert 0 < history[-1]["test_accuracy"] <= 1 and history[-1]["test_loss"] > 0
    meta, _, _ = load_checkpoint(tmp_path)
    assert (meta["epoch"], meta["batch"], meta["elapsed"]) == (1, 3, 90.0)
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3
    assert trainer.fit() == history and clock.now == 1090.0  # the budget is spent: nothing more runs

    resumed = Trainer.resume_run(tmp_path, {"time_budget": 3.0}, progress=False, train_set=train, test_set=test)
    FakeClock(resumed)
    history = resumed.fit()
    assert [row["epoch"] for row in history] == [1, 1.5, 2, 3]
    assert [row["elapsed_seconds"] for row in history] == [60.0, 90.0, 120.0, 180.0]
    assert load_checkpoint(tmp_path)[0]["epoch"] == 3
    with pytest.raises(ValueError, match="time_budget must be a positive finite number"):
        make_config(tmp_path, "fc", time_budget=0)


def test_time_budget_stop_is_final_when_the_next_evaluation_is_quicker(tmp_path, data, monkeypatch):
    """The first evaluation takes 25 s, later ones 1 s: the budget (90 s) stops epoch 2 before its
    step at 70 s (70 + 25 >= 90); the run must not train on because the quicker evaluation then
    leaves room (seen on a GPU shared by three runs: a second fractional row 0.03 epochs later)."""
    import dataclasses

    import mondeq.train.loop

    durations = iter([25.0])
    real_evaluate = mondeq.train.loop.evaluate
    monkeypatch.setattr(
        mondeq.train.loop, "evaluate", lambda *a, **k: dataclasses.replace(real_evaluate(*a, **k), seconds=next(durations, 1.0))
    )
    train, test = data
    trainer = Trainer(make_config(tmp_path, "fc", epochs=None, time_budget=1.5), train, test, progress=False)
    clock = FakeClock(trainer)
    history = trainer.fit()
    assert [row["epoch"] for row in history] == [1, 1.167] and clock.now == 1070.0
    assert trainer.fit() == history and clock.now == 1070.0
    resumed = Trainer.resume_run(tmp_path, progress=False, train_set=train, test_set=test)
    FakeClock(resumed)
    assert resumed.fit() == history  # resumed with the same budget: still spent
    resumed = Trainer.resume_run(tmp_path, {"time_budget": 2.0}, progress=False, train_set=train, test_set=test)
    FakeClock(resumed)
    assert [row["epoch"] for row in resumed.fit()] == [1, 1.167, 2]


def test_time_budget_stop_at_an_epoch_end_is_saved(tmp_path, data, monkeypatch):
    """Evaluations of 35 s: after epoch 1 (60 s) the 1.5-minute budget has no room for another
    batch and an evaluation, so the run stops there; resumed with the same budget it must not
    train on (the reserve and the spent budget are in the checkpoint)."""
    import dataclasses

    import mondeq.train.loop

    real_evaluate = mondeq.train.loop.evaluate
    monkeypatch.setattr(mondeq.train.loop, "evaluate", lambda *a, **k: dataclasses.replace(real_evaluate(*a, **k), seconds=35.0))
    train, test = data
    trainer = Trainer(make_config(tmp_path, "fc", epochs=None, time_budget=1.5), train, test, progress=False)
    FakeClock(trainer)
    history = trainer.fit()
    assert [row["epoch"] for row in history] == [1]
    assert load_checkpoint(tmp_path)[0]["budget_spent"] == 1.5
    resumed = Trainer.resume_run(tmp_path, progress=False, train_set=train, test_set=test)
    clock = FakeClock(resumed)
    assert resumed.fit() == history and clock.now == 1000.0


def test_one_cycle_spans_the_time_budget():
    config = TrainConfig(lr=1e-3, lr_schedule="one-cycle", time_budget=60.0, model_options={"channels": [4]})
    assert learning_rate(config, 0.0, progress=0.0) == pytest.approx((1e-4, 0.95))
    assert learning_rate(config, 3.0, progress=0.4) == pytest.approx((1e-3, 0.85))  # peak at 40% of the budget
    assert learning_rate(config, 9.0, progress=0.9) == pytest.approx((5.5e-5, 0.95))  # halfway from lr/10 to lr/100
    assert learning_rate(config, 9.9, progress=1.0) == pytest.approx((1e-5, 0.95))


def test_training_learns_and_logs(tmp_path, data):
    train, test = data
    trainer = Trainer(make_config(tmp_path, "fc", epochs=4, lr=1e-2), train, test, progress=False)
    history = trainer.fit()
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.3  # labels are encoded as bright bars; chance is 0.1
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,train_accuracy,test_loss,test_accuracy,forward_iterations")
    assert all(row["forward_iterations"] > 0 and row["backward_iterations"] > 0 for row in history)
    model, meta = load_model(tmp_path)
    assert meta["epoch"] == 4
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trainer.model.state_dict().values()))


def test_corrupt_checkpoints_give_clear_errors(tmp_path, data):
    train, test = data
    Trainer(make_config(tmp_path, "fc", epochs=1), train, test, progress=False).fit()
    tensors, meta_path = checkpoint_paths(tmp_path)
    original = tensors.read_bytes()

    tensors.write_bytes(original[:-10])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path)

    tensors.write_bytes(original[:8] + b"{" * (len(original) - 8))  # the size is right, the header is not JSON
    meta = json.loads(meta_path.read_text())
    meta["tensors_sha256"] = __import__("hashlib").sha256(tensors.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load_model(tmp_path)

    tensors.write_bytes(original[:-10] + b"\x00" * 10)  # the size is right, the data is not
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(tmp_path)

    tensors.write_bytes(original)
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="metadata .* is corrupt"):
        load_model(tmp_path)

    meta_path.unlink()
    with pytest.raises(CheckpointError, match="checkpoint.json not found"):
        load_model(tmp_path)


def test_checkpoint_holds_no_pickle(tmp_path, data):
    train, test = data
    Trainer(make_config(tmp_path, "fc", epochs=1), train, test, progress=False).fit()
    tensors, meta_path = checkpoint_paths(tmp_path)
    assert tensors.read_bytes()[8:9] == b"{"  # safetensors: 8-byte length, then a JSON header
    json.loads(meta_path.read_text())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_learning_rate_schedules():
    step = TrainConfig(lr=1e-3, lr_schedule="step", lr_step=10, epochs=40)
    assert learning_rate(step, 9.9)[0] == pytest.approx(1e-3)
    assert learning_rate(step, 10.0)[0] == pytest.approx(1e-4)
    cycle = TrainConfig(lr=1e-2, lr_schedule="one-cycle", epochs=65)
    assert learning_rate(cycle, 0) == pytest.approx((1e-3, 0.95))
    assert learning_rate(cycle, 30) == pytest.approx((1e-2, 0.85))
    assert learning_rate(cycle, 60) == pytest.approx((1e-3, 0.95))
    assert learning_rate(cycle, 62) == pytest.approx((6.4e-4, 0.95))
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")


def test_weight_decay_is_decoupled_and_spares_biases_and_scales(tmp_path, data):
    train, test = data
    plain = Trainer(make_config(tmp_path / "plain", "single-conv"), train, test, progress=False)
    assert [g["weight_decay"] for g in plain.optimizer.param_groups] == [0]
    trainer = Trainer(make_config(tmp_path / "wd", "single-conv", weight_decay=0.3), train, test, progress=False)
    decayed, spared = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert sorted(names[id(p)] for p in decayed["params"]) == [
        "layer.linear.A.0",
        "layer.linear.B.0",
        "layer.linear.U.weight",
        "readout.weight",
    ]
    assert decayed["weight_decay"] == 0.3 and spared["weight_decay"] == 0.0
    assert decayed["decoupled_weight_decay"] and all(p.ndim < 2 for p in spared["params"])
    # decoupled: with no gradient, one step only shrinks each decayed tensor by (1 - lr * wd)
    before = [p.detach().clone() for p in decayed["params"]]
    for p in trainer.model.parameters():
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    for old, new in zip(before, decayed["params"]):
        torch.testing.assert_close(new.detach(), old * (1 - 3e-3 * 0.3))


def test_label_smoothing_is_the_training_loss(tmp_path, data):
    """The loss logged for the first batch is the smoothed cross-entropy of the untrained model's logits."""
    import torch.nn.functional as F

    train, test = data
    trainer = Trainer(make_config(tmp_path, "fc", label_smoothing=0.4), train, test, progress=False)
    x, y = next(iter(trainer.batches()))
    with torch.no_grad():
        logits = trainer.model.train()(x)
    trainer.fit(stop_after_batches=1)
    logged = trainer.running.loss / trainer.running.examples
    assert logged == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.4).item(), rel=1e-5)
    assert abs(logged - F.cross_entropy(logits, y).item()) > 1e-4  # near-uniform logits: close, yet distinct
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="label_smoothing"):
            make_config(tmp_path, "fc", label_smoothing=bad)


def test_eval_every_skips_evaluations_but_never_the_last(tmp_path, data):
    from mondeq.plot import plot_training_curves

    train, test = data
    history = Trainer(make_config(tmp_path, "fc", epochs=4, eval_every=3), train, test, progress=False).fit()
    assert [row["test_accuracy"] is not None for row in history] == [False, False, True, True]
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[1].split(",")[3:5] == ["", ""]  # test_loss, test_accuracy left empty
    assert plot_training_curves(tmp_path / "metrics.csv", tmp_path / "curves.png").stat().st_size > 0
    with pytest.raises(ValueError, match="eval_every"):
        make_config(tmp_path, "fc", eval_every=-1)


def test_eval_every_0_evaluates_the_time_budgets_end_only(tmp_path, data):
    """10 s a step, 6 steps an epoch, a 2.5-minute budget: epochs 1 and 2 unevaluated, the stop half-way
    through epoch 3 evaluated."""
    train, test = data
    trainer = Trainer(make_config(tmp_path, "fc", epochs=None, time_budget=2.5, eval_every=0), train, test, progress=False)
    FakeClock(trainer)
    history = trainer.fit()
    assert [(row["epoch"], row["test_accuracy"] is not None) for row in history] == [(1, False), (2, False), (2.5, True)]
    assert history[-1]["elapsed_seconds"] == 150.0
    from mondeq.plot import plot_training_curves  # the fractional epoch (2.5) once failed to parse

    assert plot_training_curves(tmp_path / "metrics.csv", tmp_path / "curves.png").stat().st_size > 0


def test_eval_every_0_evaluates_an_epoch_that_ended_just_before_the_budget(tmp_path, data):
    """Epoch 1 ends at 60 s with 3 s of a 63 s budget left (room, so not evaluated then); saving it takes
    5 s, so the next epoch cannot start: the run must still end with that epoch's test accuracy."""
    train, test = data
    trainer = Trainer(make_config(tmp_path, "fc", epochs=None, time_budget=1.05, eval_every=0), train, test, progress=False)
    clock = FakeClock(trainer)
    save = trainer.save

    def slow_save():
        clock.now += 5.0
        return save()

    trainer.save = slow_save
    history = trainer.fit()
    assert [row["epoch"] for row in history] == [1] and history[0]["test_accuracy"] is not None
    assert load_checkpoint(tmp_path)[0]["history"][0]["test_accuracy"] == history[0]["test_accuracy"]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].split(",")[4] != ""


def test_recipe_expands_with_explicit_options_winning():
    from mondeq.models import build_model
    from mondeq.train import RECIPES

    for recipe in RECIPES.values():
        options = recipe.options({"lr": 1e-3, "model_options": {"tol": 0.05}})
        assert options["lr"] == 1e-3 and options["time_budget"] == recipe.settings["time_budget"]
        assert options["model_options"] == {**recipe.settings["model_options"], "tol": 0.05}
        config = TrainConfig(**{**recipe.options({}), "out": "unused"})
        assert sum(p.numel() for p in build_model(config.model_config()).parameters()) <= 100_000  # the bar
        assert recipe.options({"model": "mymodels:build"})["model_options"] == {}  # an entry point sizes itself


def test_kernel_size_option_sizes_every_convolution():
    from mondeq.models import build_model, preset_config

    config = preset_config("single-conv", "fashion-mnist", 1, 28, 10, channels=[4], stride=2, pool=2, kernel_size=5)
    model = build_model(config)
    operator = model.layer.linear
    assert operator.U.weight.shape == (4, 1, 5, 5) and operator.A[0].shape == operator.B[0].shape == (4, 4, 5, 5)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert ModelConfig.from_dict(config.to_dict()).kernel_size == 5  # stored in checkpoints


def test_multi_conv_reads_out_every_tier_pooled_to_the_coarsest():
    from mondeq.errors import ConfigError
    from mondeq.models import build_model, preset_config

    config = preset_config("multi-conv", "fashion-mnist", 1, 28, 10, channels=[2, 3], stride=2, readout="all")
    model = build_model(config)
    tiers = (torch.rand(4, 2, 14, 14), torch.rand(4, 3, 7, 7))
    fine_pooled = tiers[0].reshape(4, 2, 7, 2, 7, 2).mean(dim=(3, 5))  # 2 x 2 block means
    assert torch.allclose(model.pool(tiers), torch.cat([fine_pooled, tiers[1]], dim=1).flatten(1))
    assert model.readout.in_features == (2 + 3) * 7 * 7
    fine = tiers[0].clone().requires_grad_()
    model.readout(model.pool((fine, tiers[1]))).sum().backward()
    assert fine.grad.abs().sum() > 0  # the fine tier reaches the logits directly, not only through the coarse one
    model(torch.rand(2, 1, 28, 28)).sum().backward()  # and the implicit layer trains under it
    last = build_model(preset_config("multi-conv", "fashion-mnist", 1, 28, 10, channels=[2, 3], stride=2))
    assert torch.equal(last.pool(tiers), tiers[1].flatten(1))  # the preset reads out the coarsest tier
    with pytest.raises(ConfigError, match="applies to multi-conv"):
        preset_config("single-conv", "fashion-mnist", 1, 28, 10, readout="all")


def test_run_position_says_where_a_run_stopped():
    from mondeq.train.run_state import run_position

    assert run_position({"epoch": 3, "batch": 0, "history": [{"epoch": 3}]}) is None
    interrupted = run_position({"epoch": 3, "batch": 40, "history": [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]})
    assert "inside epoch 4, after batch 40" in interrupted and "holds the 3 finished epoch(s)" in interrupted
    budgeted = run_position({"epoch": 16, "batch": 120, "history": [{"epoch": 16}, {"epoch": 16.256}]})
    assert "when its time budget was spent" in budgeted and "partial epoch (16.256)" in budgeted


def test_the_trainer_takes_the_step_that_the_benchmarks_take(tmp_path, data):
    """``mondeq train`` and the benchmarks' time-budgeted loop both step through ``train_step``: the
    trainer's weights after 4 batches are those of 4 ``train_step`` calls on the same batches."""
    import copy

    import torch.nn.functional as F

    from mondeq.data import Batches
    from mondeq.train import make_optimizer, tunes_alpha
    from mondeq.train.step import reuse_store, train_step

    config = make_config(tmp_path / "run", model="fc", lr_schedule="constant", label_smoothing=0.1, reuse="forward")
    trainer = Trainer(config, *data, progress=False)
    model = copy.deepcopy(trainer.model)
    trainer.fit(stop_after_batches=4)
    optimizer = make_optimizer(model, config)
    store = reuse_store(config, model, len(data[0]))
    model.layer.fixed_points = store
    batches = Batches(
        data[0], config.batch_size, shuffle=True, augment=config.augmentation(data[0].info), seed=config.seed, epoch=0
    )

    def objective(logits, x, y, epoch):
        return F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)

    for index, (x, y) in enumerate(batches):
        if index == 4:
            break
        tune = tunes_alpha(config, index, len(batches))  # as the trainer: at batch 30 and half-way
        progress = index / len(batches)
        train_step(
            model, optimizer, config, x, y, objective, progress, 0.0, tune=tune, store=store, examples=batches.indices(index)
        )
    for (name, ours), theirs in zip(model.state_dict().items(), trainer.model.state_dict().values()):
        assert torch.equal(ours, theirs), name
