"""User-defined models through a ``package.module:function`` entry point: trainer, resume, CLI, errors."""

import json
import sys

import pytest
import torch

from datafiles import write_mnist_like
from mondeq.cli import main
from mondeq.data import load_dataset
from mondeq.errors import ConfigError
from mondeq.models import EntryPointConfig, EntryPointModel, equilibrium_input, load_model
from mondeq.train import TrainConfig, Trainer, tune_alpha

MODULE = "mondeq_test_user_models"
SOURCE = '''
from torch import nn

import mondeq


def build(in_channels, image_size, num_classes, channels=4):
    """A convolutional stem, a monotone layer on its feature map, a pooled linear head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(),
        mondeq.MonDEQ(mondeq.SingleConv(channels, channels, image_size, m=1.0), tol=1e-4, max_iter=100),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * channels, num_classes),
    )


def build_bn(in_channels, image_size, num_classes):
    """A stem with batch norm: its statistics must move only in training steps."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        mondeq.MonDEQ(mondeq.SingleConv(3, 3, image_size, m=1.0), tol=1e-4, max_iter=100),
        nn.Flatten(),
        nn.Linear(3 * image_size**2, num_classes),
    )


def plain(in_channels, image_size, num_classes):
    return nn.Linear(in_channels * image_size**2, num_classes)


def text(in_channels, image_size, num_classes):
    return "a model"


not_callable = 3
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / f"{MODULE}.py").write_text(SOURCE)
    return folder


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    return write_mnist_like(tmp_path_factory.mktemp("fashion"), train=96, test=40)


@pytest.fixture()
def importable(user_module, monkeypatch):
    monkeypatch.syspath_prepend(str(user_module))
    yield
    sys.modules.pop(MODULE, None)


def config(out, data_folder, **kw):
    options = dict(dataset="fashion-mnist", model=f"{MODULE}:build", epochs=2, batch_size=16, test_batch_size=20, lr=3e-3)
    return TrainConfig(**{**options, **kw}, out=str(out), data_dir=str(data_folder))


def test_trainer_trains_resumes_and_reloads_a_user_model(tmp_path, data_folder, importable):
    """An uninterrupted run and one stopped after 3 batches and resumed end in the same weights;
    the checkpoint rebuilds the user's model, whose stem feeds the monotone layer."""
    train, test = load_dataset("fashion-mnist", "train", data_folder), load_dataset("fashion-mnist", "test", data_folder)
    full = Trainer(config(tmp_path / "full", data_folder), train, test, progress=False)
    assert isinstance(full.model, EntryPointModel) and full.model.layer is full.model.net[2]
    history = full.fit()
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(row["forward_iterations"] > 1 and row["backward_iterations"] > 1 for row in history)

    parted = Trainer(config(tmp_path / "parted", data_folder), train, test, progress=False)
    parted.fit(stop_after_batches=3)
    resumed = Trainer.resume_run(tmp_path / "parted", progress=False, train_set=train, test_set=test)
    assert resumed.fit()[-1]["test_accuracy"] == history[-1]["test_accuracy"]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name

    model, meta = load_model(tmp_path / "full")
    assert meta["model"] == {"entry_point": f"{MODULE}:build", "in_channels": 1, "image_size": 28, "num_classes": 10}
    assert model.layer.alpha == full.model.layer.alpha
    x = torch.randn(5, 1, 28, 28)
    full.model.eval()
    torch.testing.assert_close(model(x), full.model(x), rtol=0, atol=0)


def test_cli_runs_a_user_model_from_the_current_folder(tmp_path, data_folder, user_module, monkeypatch, capsys):
    """``mondeq train --model module:function`` finds the module in the current folder (as
    ``python -m`` would); eval and plot work on the run; certify refuses it with a reason."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(user_module))])
    monkeypatch.chdir(user_module)
    out = tmp_path / "run"
    common = ["--data-dir", str(data_folder), "--no-progress"]
    assert main(["train", "--model", f"{MODULE}:build", "--epochs", "1", "--batch-size", "16", "--out", str(out), *common]) == 0
    sys.modules.pop(MODULE, None)
    capsys.readouterr()
    assert main(["eval", str(out), "--data-dir", str(data_folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == f"{MODULE}:build" and report["examples"] == 40
    assert main(["plot", str(out)]) == 0
    assert (out / "plots" / "convergence.png").is_file()
    assert main(["certify", str(out), "--data-dir", str(data_folder)]) == 2
    assert "certify needs a preset model" in capsys.readouterr().err
    sys.modules.pop(MODULE, None)


def test_alpha_search_and_plot_input_leave_batch_norm_alone(importable):
    """tune_alpha and equilibrium_input run the model in evaluation mode and restore its mode;
    equilibrium_input returns what the stem hands the monotone layer."""
    torch.manual_seed(0)
    model = EntryPointModel(EntryPointConfig(f"{MODULE}:build_bn", in_channels=1, image_size=8, num_classes=3))
    x = torch.randn(4, 1, 8, 8)
    norm = model.net[1]
    before = (norm.running_mean.clone(), norm.running_var.clone(), int(norm.num_batches_tracked))
    tune_alpha(model, x, max_alpha=1.0)
    stem_output = equilibrium_input(model, x)
    assert model.training
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
    assert int(norm.num_batches_tracked) == before[2]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(stem_output, model.net[1](model.net[0](x)))


@pytest.mark.parametrize(
    "model, options, match",
    [
        ("resnet", {}, r"unknown model 'resnet'; choose one of .* or a 'package.module:function'"),
        (":build", {}, "must read 'package.module:function'"),
        ("mondeq_no_such_module:build", {}, "cannot import 'mondeq_no_such_module'"),
        (f"{MODULE}:missing", {}, f"module '{MODULE}' has no 'missing'"),
        (f"{MODULE}:not_callable", {}, "is a int, not a function"),
        (f"{MODULE}:text", {}, "returned a str, not an nn.Module"),
        (f"{MODULE}:plain", {}, "returned a Linear without a MonDEQ layer"),
        (f"{MODULE}:build", {"channels": [8]}, r"model options \(channels\) size the presets"),
    ],
)
def test_bad_entry_points_are_named(tmp_path, data_folder, importable, model, options, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(config(tmp_path, data_folder, model=model, model_options=options), progress=False)
