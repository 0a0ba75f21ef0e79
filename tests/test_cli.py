"""The ``mondeq`` command end to end, through its console entry point, on tiny data."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datafiles import write_mnist_like


def mondeq(*args, check=True):
    exe = shutil.which("mondeq")
    command = [exe] if exe else [sys.executable, "-m", "mondeq"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"mondeq {args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_mnist_like(root / "data", train=64, test=32)
    out = root / "run"
    result = mondeq(
        "train",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        data,
        "--model",
        "single-conv",
        "--channels",
        4,
        "--epochs",
        1,
        "--batch-size",
        16,
        "--out",
        out,
        "--tol",
        1e-3,
    )
    return root, data, out, result


def test_train_writes_run_and_reports_accuracy(run):
    _, _, out, result = run
    assert "test accuracy" in result.stdout
    assert len(list(out.glob("checkpoint-*.safetensors"))) == 1 and (out / "checkpoint.json").is_file()
    assert len((out / "metrics.csv").read_text().splitlines()) == 2
    assert "batch" in result.stderr  # the progress bar


def test_resume_extends_the_run(run, tmp_path):
    _, data, out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    mondeq("train", "--resume", copy, "--epochs", 2, "--data-dir", data, "--no-progress")
    assert json.loads((copy / "checkpoint.json").read_text())["epoch"] == 2
    assert len((copy / "metrics.csv").read_text().splitlines()) == 3


def test_eval(run):
    _, data, out, _ = run
    report = json.loads(mondeq("eval", out, "--data-dir", data).stdout)
    assert report["examples"] == 32 and 0 <= report["test_accuracy"] <= 1
    assert report["forward_iterations"] > 0 and report["solver"] == "pr"


def test_predict_png(run, tmp_path):
    _, _, out, _ = run
    paths = []
    for i in range(2):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 30), dtype=np.uint8)).save(path)
        paths.append(path)
    lines = mondeq("predict", out, *paths).stdout.strip().splitlines()
    assert len(lines) == 2 and all("(p=" in line for line in lines)
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert all(line.split(": ", 1)[1].rsplit(" (", 1)[0] in classes for line in lines)


def test_predict_warns_about_an_image_unlike_the_training_data(run, tmp_path):
    _, _, out, _ = run
    inverted = np.full((28, 28), 255, dtype=np.uint8)
    inverted[8:20, 10:18] = 30  # a dark object on a light background: Fashion-MNIST is the other way round
    Image.fromarray(inverted).save(tmp_path / "inverted.png")
    result = mondeq("predict", out, tmp_path / "inverted.png")
    assert "(p=" in result.stdout
    assert "warning" in result.stderr and "light object on a dark background" in result.stderr


def test_plot(run):
    _, data, out, _ = run
    written = mondeq("plot", out, "--data-dir", data, "--batch-size", 8, "--max-iter", 30).stdout.split()
    assert {Path(p).name for p in written} == {"training_curves.png", "convergence.png"}
    for p in written:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_reported_not_traced(tmp_path):
    result = mondeq("train", "--dataset", "mnist", "--data-dir", tmp_path, "--out", tmp_path / "r", check=False)
    assert result.returncode == 2
    assert "train-images-idx3-ubyte.gz" in result.stderr and "Traceback" not in result.stderr
    result = mondeq("eval", tmp_path / "nothing", check=False)
    assert result.returncode == 2 and "not found" in result.stderr


def test_ctrl_c_before_a_command_is_running_is_one_line(monkeypatch, capsys):
    """Ctrl-C while modules still import (before the command's own handler) ends with exit 130 and a
    line, not a traceback."""
    from mondeq import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["train"]) == 130
    assert capsys.readouterr().err.strip() == "mondeq: interrupted"


def test_a_recipe_says_which_of_its_options_another_model_drops(tmp_path):
    data = write_mnist_like(tmp_path / "data", train=16, test=8)
    command = ["train", "--recipe", "fmnist-fast", "--model", "fc", "--width", 4, "--data-dir", data]
    result = mondeq(*command, "--epochs", 1, "--time-budget", "10m", "--out", tmp_path / "run", "--no-progress")
    dropped = "--recipe fmnist-fast with --model fc: the recipe's --channels, --kernel-size, --stride, --pool dropped"
    assert dropped in result.stderr


def test_help_lists_commands():
    text = mondeq("--help").stdout
    for command in ("train", "eval", "predict", "plot"):
        assert command in text
    assert "--max-iter" in mondeq("train", "--help").stdout


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, signum):
    import time

    data = write_mnist_like(tmp_path / "data", train=64, test=16)
    out = tmp_path / "run"
    exe = shutil.which("mondeq")
    command = [exe] if exe else [sys.executable, "-m", "mondeq"]
    args = ["train", "--data-dir", data, "--model", "fc", "--width", 8, "--epochs", 100000, "--batch-size", 16, "--out", out]
    process = subprocess.Popen(
        [*command, *map(str, args), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert f"stopped by {signum.name}: checkpoint saved" in stderr and "Traceback" not in stderr
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["epoch"] >= 1


def test_certify_and_its_plot(run, tmp_path):
    _, data, out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    text = mondeq("certify", copy, "--data-dir", data, "--limit", 16, "--pgd-steps", 2, "--eps", 0.1, 0.5).stdout
    assert "Lipschitz bound (l2)" in text and "eps 0.5: certified accuracy" in text and "PGD (2 steps)" in text
    report = json.loads((copy / "certify.json").read_text())
    assert report["examples"] == 16 and report["lipschitz_logits"] > 0
    assert all(c <= p for c, p in zip(report["certified_accuracy"], report["pgd_accuracy"]))
    written = mondeq("plot", copy, "--data-dir", data, "--batch-size", 8, "--max-iter", 10, "--compare", out).stdout.split()
    assert {"certified_accuracy.png", "accuracy_vs_time.png"} <= {Path(p).name for p in written}
    refused = mondeq("plot", copy, "--data-dir", data, "--compare", tmp_path, check=False)
    assert refused.returncode == 2 and "--compare: no metrics.csv in" in refused.stderr


@pytest.mark.parametrize(
    "model", [["--model", "fc", "--width", 8], ["--model", "single-conv", "--channels", 4, "--stride", 2, "--pool", 2]]
)
def test_train_and_certify_for_linf(tmp_path, model):
    data = write_mnist_like(tmp_path / "data", train=64, test=16)
    out = tmp_path / "run"
    options = [*model, "--interval", "--m", "0.5", "--certified", "linf:0.1", "--epochs", 2]
    mondeq("train", "--data-dir", data, *options, "--certified-warmup", 0, "--certified-ramp", 1, "--out", out, "--no-progress")
    text = mondeq("certify", out, "--norm", "linf", "--data-dir", data, "--limit", 16, "--pgd-steps", 2).stdout
    assert "interval bounds through the equilibrium" in text and "linf eps 0.1: certified accuracy" in text
    report = json.loads((out / "certify.json").read_text())
    assert report["norm"] == "linf" and report["eps"] == [0.05, 0.1]
    assert all(c <= p for c, p in zip(report["certified_accuracy"], report["pgd_accuracy"]))
    written = mondeq("plot", out, "--data-dir", data, "--batch-size", 8, "--max-iter", 10).stdout.split()
    assert "certified_accuracy.png" in {Path(p).name for p in written}


def test_the_main_command_runs_twice_without_touching_the_first_run(tmp_path):
    data = write_mnist_like(tmp_path / "data", train=32, test=16)
    command = ["train", "--data-dir", data, "--model", "fc", "--width", 8, "--no-progress"]
    work = tmp_path / "work"
    work.mkdir()
    env_cwd = os.getcwd()
    os.chdir(work)
    try:
        mondeq(*command)
        first = (work / "runs" / "fashion-mnist-fc" / "checkpoint.json").read_bytes()
        second = mondeq(*command)
        assert "runs/fashion-mnist-fc holds a run; this run goes to runs/fashion-mnist-fc-2" in second.stderr
        assert (work / "runs" / "fashion-mnist-fc" / "checkpoint.json").read_bytes() == first
        assert (work / "runs" / "fashion-mnist-fc-2" / "checkpoint.json").is_file()
        # --resume without a folder continues the last run; a finished one says so and how to go on
        finished = mondeq("train", "--resume", "--data-dir", data, "--model", "fc", "--no-progress")
        assert "runs/fashion-mnist-fc-2 is finished" in finished.stdout and "--epochs N" in finished.stdout
        refused = mondeq(*command, "--out", "runs/fashion-mnist-fc", check=False)  # explicit: refused as before
        assert refused.returncode == 2 and "already holds a run" in refused.stderr
    finally:
        os.chdir(env_cwd)


def test_export_then_predict_with_the_exported_file(run, tmp_path):
    _, _, out, _ = run
    result = mondeq("export", out, "--format", "pt2", "--out", tmp_path / "model.pt2", "--error", 0.05, "--certify")
    assert "Peaceman-Rachford iterations" in result.stdout and "proven: for every image" in result.stdout
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (28, 28), dtype=np.uint8)).save(image)
    implicit = mondeq("predict", out, image).stdout.split(": ")[1].rsplit(" (", 1)[0]
    answer = mondeq("predict", tmp_path / "model.pt2", image).stdout
    assert implicit == answer.split(": ")[1].rsplit(" (", 1)[0]
    assert "logits within" in answer  # the file's own bound for this image


def test_export_refuses_bad_input_in_one_line(run, tmp_path):
    _, _, out, _ = run
    cases = [
        (("--error", 0), "must be a positive finite number"),
        (("--error", 1e-300), "more than 1000"),
        (("--iterations", 5, "--error", 0.1), "not allowed with"),
        (("--out", tmp_path / "missing" / "m.pt2"), "does not exist"),
    ]
    for extra, message in cases:
        result = mondeq("export", out, "--format", "pt2", *extra, check=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    (tmp_path / "empty").mkdir()
    result = mondeq("export", tmp_path / "empty", "--format", "pt2", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
