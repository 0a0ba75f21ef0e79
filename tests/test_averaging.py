"""Weight averaging, batch augmentation and the tolerance schedule of ``mondeq train``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from datafiles import fashion_like
from helpers import run_config
from mondeq.checkpoint import load_checkpoint
from mondeq.cli import main
from mondeq.data import Augmentation, Batches, erase_batch, translate_batch
from mondeq.errors import ConfigError
from mondeq.models import build_model, load_model, preset_config
from mondeq.models.spectral import linear_norm
from mondeq.train import TrainConfig, Trainer, learning_rate
from mondeq.train.averaging import WeightAverage, parse_average
from mondeq.train.step import training_tolerance


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fashion_like(tmp_path_factory.mktemp("fashion"), train=96, test=40)


def make_config(out, **kw):
    options = {"epochs": 2, "test_batch_size": 20, "lr": 3e-3, **kw}
    return run_config(out, model_options={"tol": 1e-4, "max_iter": 100}, **options)


# -- weight averaging ------------------------------------------------------------------------
def test_ema_is_the_exponential_average_of_the_steps(data):
    """After steps theta_1..theta_k the EMA is theta_1 then d*avg + (1-d)*theta, checked by hand."""
    model = build_model(preset_config("fc", "fashion-mnist", 1, 28, 10, width=6))
    average = WeightAverage(model, parse_average("ema:0.9"))
    expected = None
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (step + 1))
        average.update(model, progress=step / 4)
        current = [p.detach().clone() for p in model.parameters()]
        expected = current if expected is None else [0.9 * e + 0.1 * c for e, c in zip(expected, current)]
    assert average.updates == 4
    for mine, reference in zip(average.module.parameters(), expected):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-6)


def test_swa_averages_equally_from_its_start():
    model = build_model(preset_config("fc", "fashion-mnist", 1, 28, 10, width=6))
    average = WeightAverage(model, parse_average("swa:0.5"))
    seen = []
    for step in range(6):
        with torch.no_grad():
            model.readout.bias.add_(1.0)
        average.update(model, progress=step / 6)
        if step / 6 >= 0.5:
            seen.append(model.readout.bias.detach().clone())
    assert average.updates == len(seen) == 3
    torch.testing.assert_close(average.module.readout.bias, torch.stack(seen).mean(0))


@pytest.mark.parametrize("text", ["ema:1", "ema:0", "ema:x", "swa:1", "mean", "ema:-0.5"])
def test_bad_averages_are_refused(text):
    with pytest.raises(ConfigError, match="average"):
        parse_average(text)


def test_average_is_saved_resumed_bit_for_bit_and_used_by_eval(tmp_path, data, capsys):
    train, test, folder = data
    full = Trainer(make_config(tmp_path / "full", average="ema:0.95"), train, test, progress=False)
    history = full.fit()
    first = Trainer(make_config(tmp_path / "split", average="ema:0.95"), train, test, progress=False)
    first.fit(stop_after_batches=9)
    resumed = Trainer.resume_run(tmp_path / "split", train_set=train, test_set=test, progress=False)
    assert resumed.average.updates == 9
    resumed_history = resumed.fit()
    for name, value in full.average.state_dict().items():
        assert torch.equal(value, resumed.average.state_dict()[name]), name
    assert resumed_history[-1]["test_accuracy"] == history[-1]["test_accuracy"]
    assert full.average.updates == resumed.average.updates == 12

    meta, trained, _ = load_checkpoint(tmp_path / "full")
    _, averaged, _ = load_checkpoint(tmp_path / "full", weights="average")
    assert meta["average"] == {"spec": "ema:0.95", "updates": 12}
    assert not torch.equal(trained["readout.weight"], averaged["readout.weight"])
    model, _ = load_model(tmp_path / "full")
    assert torch.equal(model.readout.weight, full.average.module.readout.weight)
    assert torch.equal(load_model(tmp_path / "full", weights="model")[0].readout.weight, full.model.readout.weight)

    # the test accuracy the run recorded is the average's; eval says which weights it used
    capsys.readouterr()  # the training runs' epoch lines
    assert main(["eval", str(tmp_path / "full"), "--data-dir", str(folder), "--batch-size", "20"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["weights"] == "average" and report["test_accuracy"] == round(history[-1]["test_accuracy"], 4)
    assert "averaged weights (ema:0.95, 12 steps)" in captured.err
    assert main(["eval", str(tmp_path / "full"), "--data-dir", str(folder), "--batch-size", "20", "--weights", "model"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["weights"] == "model" and "averaged" not in captured.err


def test_the_average_solves_its_own_equilibria_not_the_stored_fixed_points(tmp_path, data):
    train, test, _ = data
    trainer = Trainer(make_config(tmp_path / "run", average="ema:0.9", reuse="both"), train, test, progress=False)
    trainer.fit()
    assert trainer.model.layer.fixed_points is trainer.fixed_points
    assert trainer.average.module.layer.fixed_points is None
    assert trainer.evaluated_model() is trainer.average.module


@pytest.mark.parametrize("model, size", [("fc", {"width": 10}), ("single-conv", {"channels": [3]})])
def test_a_lipschitz_models_averaged_weights_keep_its_bound(tmp_path, data, model, size):
    """The average is of the free parameters (a NormBound's ``original``), so ||U|| <= bound holds
    for the averaged model as for every parameter value; checked with the exact norm."""
    train, test, _ = data
    config = TrainConfig(
        dataset="fashion-mnist",
        model=model,
        epochs=1,
        batch_size=16,
        lr=3e-2,
        out=str(tmp_path / "run"),
        average="swa:0",
        model_options={**size, "lipschitz": 1.0, "m": 0.5},
    )
    trainer = Trainer(config, train, test, progress=False)
    trainer.fit()
    averaged, trained = trainer.average.module, trainer.model
    assert averaged.config.lipschitz == 1.0 and trainer.average.updates == 6
    differs = False
    for name, module in averaged.named_modules():
        if hasattr(module, "parametrizations"):
            for weight in module.parametrizations:
                value = getattr(module, weight)
                bound = module.parametrizations[weight][0]
                norm = float(bound.norm(value.detach().double()))
                assert norm <= bound.bound * (1 + 1e-5), (name, norm)
                differs |= not torch.equal(value, getattr(trained.get_submodule(name), weight))
    assert differs  # the averaged constrained weights are not the trained ones
    assert math.isfinite(float(linear_norm(averaged.readout.weight.detach())))


# -- augmentation on the batch --------------------------------------------------------------
def test_translation_moves_each_image_whole_and_fills_with_zeros():
    images = torch.arange(1, 5 * 1 * 12 * 12 + 1, dtype=torch.float32).reshape(5, 1, 12, 12)
    out = translate_batch(images, torch.Generator().manual_seed(1), pixels=2)
    assert out.shape == images.shape and out.dtype == images.dtype
    for original, moved in zip(images, out):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(moved, torch.roll(torch.nn.functional.pad(original, (2, 2, 2, 2)), (dy, dx), (1, 2))[:, 2:-2, 2:-2])
        ]
        assert len(found) == 1  # exactly one shift in [-2, 2]^2 explains it, borders zero


def test_erasing_blanks_one_rectangle_per_chosen_image():
    images = torch.full((200, 1, 28, 28), 255, dtype=torch.uint8)
    out = erase_batch(images, torch.Generator().manual_seed(0), probability=0.5)
    assert out.shape == images.shape and out.dtype == torch.uint8
    blanked = (out == 0).squeeze(1)
    erased = blanked.flatten(1).any(1)
    assert 70 < int(erased.sum()) < 130
    for mask in blanked[erased]:
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        assert int(mask.sum()) == len(rows) * len(cols)  # a full rectangle
        assert torch.equal(rows, torch.arange(rows[0], rows[-1] + 1)) and torch.equal(cols, torch.arange(cols[0], cols[-1] + 1))
        assert 0.01 <= len(rows) * len(cols) / 784 <= 0.3
    assert set(out.unique().tolist()) <= {0, 255}


def test_augmentation_keeps_labels_and_value_range_and_is_deterministic_under_a_seed(data):
    train = data[0]
    augmentation = Augmentation(shift=2, erase=0.5)
    plain = list(Batches(train, 32, shuffle=True, seed=3, epoch=1))
    first = list(Batches(train, 32, shuffle=True, augment=augmentation, seed=3, epoch=1))
    again = list(Batches(train, 32, shuffle=True, augment=augmentation, seed=3, epoch=1))
    low, high = (float(train.normalize(torch.full((1, 1, 1, 1), v, dtype=torch.uint8))) for v in (0, 255))
    for (x, y), (xa, ya), (xb, yb) in zip(plain, first, again):
        assert torch.equal(y, ya) and xa.shape == x.shape
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert low - 1e-6 <= float(xa.min()) and float(xa.max()) <= high + 1e-6
    assert any(not torch.equal(x, xa) for (x, _), (xa, _) in zip(plain, first))
    other = list(Batches(train, 32, shuffle=True, augment=augmentation, seed=4, epoch=1))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_the_training_options_build_the_augmentation(tmp_path, data):
    config = make_config(tmp_path / "run", shift=2, erase=0.25)
    assert config.augmentation(data[0].info) == Augmentation(crop_flip=False, shift=2, erase=0.25)
    assert not make_config(tmp_path / "run").augmentation(data[0].info)
    with pytest.raises(ConfigError, match="erase"):
        make_config(tmp_path / "run", erase=1.5)


# -- the tolerance schedule ------------------------------------------------------------------
def test_the_tolerance_schedule_follows_the_learning_rate(tmp_path):
    config = make_config(tmp_path / "run", lr=4e-3, lr_schedule="one-cycle", tol_peak=0.1, epochs=20)
    assert training_tolerance(config, 1e-2, 4e-3) == pytest.approx(0.1)
    assert training_tolerance(config, 1e-2, 0.0) == pytest.approx(1e-2)
    assert training_tolerance(config, 1e-2, 2e-3) == pytest.approx(math.sqrt(1e-3))
    tolerances = [training_tolerance(config, 1e-2, learning_rate(config, t)[0]) for t in range(20)]
    peak = max(range(20), key=lambda t: learning_rate(config, t)[0])
    assert max(range(20), key=lambda t: tolerances[t]) == peak
    assert training_tolerance(make_config(tmp_path / "run"), 1e-2, 4e-3) == 1e-2  # no schedule


def test_a_training_step_solves_to_the_scheduled_tolerance_and_restores_the_layers(tmp_path, data):
    from torch.nn import functional as F

    from mondeq.train.step import train_step

    config = make_config(tmp_path / "run", lr=1e-3, lr_schedule="constant", tol_peak=0.2)
    model = build_model(config.model_config())
    seen = []
    model.layer.register_forward_hook(
        lambda module, args, out: seen.append((module.forward_options.tol, module.backward_options.tol))
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = next(iter(Batches(data[0], 16)))
    train_step(model, optimizer, config, x, y, lambda logits, *_: F.cross_entropy(logits, y), 0.0, 0.0)
    assert seen == [(pytest.approx(0.2), pytest.approx(0.2))]
    assert model.layer.forward_options.tol == 1e-4 == model.layer.backward_options.tol
