"""Fault injection and bad inputs for ``mondeq train``: the numbers behind docs/reliability.md.

1. Fault injection: trains a small model with checkpoints before every batch, delivers
   ``kill -9``, SIGTERM, SIGINT or a double SIGINT at random moments, inspects the run folder
   after each (a state is *resumable* when its checkpoint loads), resumes, and when a run
   finishes compares it with an uninterrupted run of the same command (parameters and
   metrics, timing columns aside).
2. Bad inputs: each command line of :data:`BAD_INPUTS` must end with exit code 2 and a
   one-line error naming the problem, never a traceback (``tests/test_cli_errors.py`` runs the
   same table).

Usage::

    python scripts/reliability.py [--signals 120] [--seed 0] [--out docs/reliability.md]
    python scripts/reliability.py --signals 6 --out /tmp/reliability.md   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

#: (what is wrong, command line, a fragment the one-line error must contain). Placeholders:
#: {data} a small MNIST-format folder, {run} a trained run, {file} a regular file, {missing} a
#: path that does not exist, and the damaged copies made by :func:`prepare`.
BAD_INPUTS: list[tuple[str, str, str]] = [
    ("threads 0", "train --data-dir {data} --threads 0", "--threads: 0 must be"),
    ("device empty", "train --data-dir {data} --device ''", "unknown device ''"),
    ("threads -1", "train --data-dir {data} --threads -1", "--threads: -1 must be"),
    ("time-budget 0", "train --data-dir {data} --time-budget 0m", "--time-budget: 0m must be a finite duration > 0"),
    ("time-budget text", "train --data-dir {data} --time-budget soon", "--time-budget: 'soon' is not a duration"),
    ("recipe unknown", "train --data-dir {data} --recipe fast", "--recipe: invalid choice: 'fast'"),
    ("stride fc", "train --data-dir {data} --model fc --stride 2", "stride 2 applies to the convolutional models"),
    ("stride odd size", "train --data-dir {data} --stride 3", "not a multiple of the injection stride 3"),
    ("kernel fc", "train --data-dir {data} --model fc --kernel-size 5", "kernel size 5 applies to the convolutional models"),
    ("kernel even", "train --data-dir {data} --kernel-size 4", "kernel_size must be a positive odd integer, got 4"),
    ("readout single-conv", "train --data-dir {data} --readout all", "readout 'all' applies to multi-conv"),
    ("model unknown", "train --data-dir {data} --model resnet", "neither a preset (fc, single-conv, multi-conv)"),
    ("entry point not importable", "train --data-dir {data} --model no_such_module:build", "cannot import 'no_such_module'"),
    ("entry point with sizes", "train --data-dir {data} --model os:getcwd --channels 8", "model options (channels)"),
    ("max-alpha 0", "train --data-dir {data} --max-alpha 0", "--max-alpha: 0 must be"),
    ("max-alpha -1", "train --data-dir {data} --max-alpha -1", "--max-alpha: -1 must be"),
    ("lr inf", "train --data-dir {data} --lr inf", "--lr: inf must be a positive finite number"),
    ("weight-decay -1", "train --data-dir {data} --weight-decay -1", "--weight-decay: -1 must be"),
    ("label-smoothing 1", "train --data-dir {data} --label-smoothing 1", "--label-smoothing: 1 must be a number in [0, 1)"),
    ("eval-every -1", "train --data-dir {data} --eval-every -1", "--eval-every: -1 must be"),
    ("lr nan", "train --data-dir {data} --lr nan", "--lr: nan must be a positive finite number"),
    ("m inf", "train --data-dir {data} --m inf", "--m: inf must be a positive finite number"),
    ("alpha 1e300", "train --data-dir {data} --model fc --alpha 1e300 --no-tune-alpha --out {tmp}/a", "alpha"),
    ("train-limit 0", "train --data-dir {data} --train-limit 0", "--train-limit: 0 must be"),
    ("train-limit -5", "train --data-dir {data} --train-limit -5", "--train-limit: -5 must be"),
    ("test-limit 0", "train --data-dir {data} --test-limit 0", "--test-limit: 0 must be"),
    ("batch-size 0", "train --data-dir {data} --batch-size 0", "--batch-size: 0 must be"),
    ("epochs 1.5", "train --data-dir {data} --epochs 1.5", "--epochs: '1.5' is not an integer"),
    ("device bogus", "train --data-dir {data} --device bogus", "unknown device 'bogus'"),
    ("device cuda without a GPU", "train --data-dir {data} --device cuda", "no CUDA GPU is available"),
    ("data-dir that does not exist", "train --data-dir {missing}", "does not exist"),
    ("data-dir without the files", "train --dataset mnist --data-dir {tmp}", "not found; looked for"),
    ("out inside a regular file", "train --data-dir {data} --model fc --out {file}/run", "cannot write to run folder"),
    ("out is a regular file", "train --data-dir {data} --model fc --out {file}", "not a folder"),
    ("resume with other options", "train --resume {run} --lr 0.5 --solver fb", "--lr, --solver would change the stored run"),
    ("resume a folder with no run", "train --resume {missing}", "not found"),
    ("resume: JSON lacks a key", "train --resume {keyless_run} --data-dir {data}", "lacks the entry 'running'"),
    ("resume: weights of another shape", "train --resume {shape_run} --data-dir {data}", "cannot resume from checkpoint"),
    ("eval: weights of another shape", "eval {shape_run} --data-dir {data}", "does not describe a valid model"),
    ("eval: NaN weights", "eval {nan_run} --data-dir {data}", "NaN or Inf values in weight"),
    ("eval: corrupt JSON", "eval {corrupt_run} --data-dir {data}", "is corrupt"),
    ("eval --limit 0", "eval {run} --limit 0", "--limit: 0 must be"),
    ("predict: NaN weights", "predict {nan_run} {png}", "NaN or Inf values in weight"),
    ("predict: not an image", "predict {run} {file}", "cannot read image"),
    ("predict: missing image", "predict {run} {missing}", "not found"),
    ("predict: decompression bomb", "predict {run} {bomb}", "decompression bomb"),
    ("certify --eps -1", "certify {run} --eps -1", "--eps: -1 must be"),
    ("certify --eps 0", "certify {run} --eps 0", "--eps: 0 must be"),
    ("certify --device bogus", "certify {run} --device bogus", "unknown device 'bogus'"),
    ("certify --norm linf untrained for it", "certify {run} --norm linf", "l-infinity certificates need the interval operator"),
    ("certify --norm l1", "certify {run} --norm l1", "--norm: invalid choice: 'l1'"),
    ("export --error 0", "export {run} --format pt2 --error 0", "--error: 0 must be a positive finite number"),
    ("export --iterations beyond 1000", "export {run} --format pt2 --iterations 1001", "at most 1000"),
    ("export --iterations 0", "export {run} --iterations 0", "--iterations: 0 must be"),
    ("export --error with --iterations", "export {run} --error 0.1 --iterations 3", "not allowed with argument"),
    ("export --format tflite", "export {run} --format tflite", "--format: invalid choice: 'tflite'"),
    ("export --out in a missing folder", "export {run} --format pt2 --out {missing}/model.pt2", "does not exist"),
    ("export a folder without a run", "export {missing} --format pt2", "not found"),
    ("export: NaN weights", "export {nan_run} --format pt2", "NaN or Inf values in weight"),
    ("predict: a damaged exported file", "predict {bad_export} {png}", "not a readable exported model"),
    ("lipschitz 0", "train --data-dir {data} --model fc --lipschitz 0", "--lipschitz: 0 must be a positive"),
    (
        "lipschitz multi-conv",
        "train --data-dir {data} --model multi-conv --lipschitz 1",
        "lipschitz 1.0 applies to fc and single-conv",
    ),
    (
        "certified eps < 0",
        "train --data-dir {data} --model fc --lipschitz 1 --certified l2:-0.1",
        "NORM:EPS with NORM one of l2, linf and EPS > 0",
    ),
    ("certified without its model", "train --data-dir {data} --model fc --certified linf:0.1", "needs a model built for it"),
    (
        "interval multi-conv",
        "train --data-dir {data} --model multi-conv --interval --m 0.5",
        "interval True applies to fc and single-conv, not multi-conv",
    ),
    ("interval m 1", "train --data-dir {data} --model fc --interval", "the interval operator needs a margin m < 1"),
    ("interval single-conv m 1", "train --data-dir {data} --interval", "the interval operator needs a margin m < 1"),
    (
        "interval single-conv with lipschitz",
        "train --data-dir {data} --interval --m 0.5 --lipschitz 1",
        "two certified models: choose one",
    ),
    (
        "interval single-conv kernel larger than the hidden image",
        "train --data-dir {data} --interval --m 0.5 --stride 4 --kernel-size 9 --pool 1",
        "every hidden side >= kernel_size 9",
    ),
    (
        "certified linf on single-conv without --interval",
        "train --data-dir {data} --certified linf:0.1",
        "needs a model built for it",
    ),
    ("certified linf:0", "train --data-dir {data} --interval --m 0.5 --certified linf:0", "NORM:EPS with NORM one of"),
    ("plot into a symlinked folder", "plot {run} --out {symlink_dir} --data-dir {data}", "symbolic link"),
    ("demo --batch-size 0", "demo --batch-size 0", "--batch-size: 0 must be"),
    ("SVHN saved as MATLAB v7.3", "train --dataset svhn --data-dir {svhn73}", "v7.3"),
    ("CIFAR pickle with a huge array", "train --dataset cifar10 --data-dir {cifar_bomb}", "cifar"),
    # -- a run is never lost: one writer per folder, a finished run is not overwritten
    ("train into a folder that holds a run", "train --data-dir {data} --model fc --out {run}", "already holds a run"),
    ("train into a folder in use", "train --data-dir {data} --model fc --out {locked_run} --overwrite", "is in use by another"),
    ("resume and overwrite together", "train --resume {run} --overwrite", "give one of them"),
    # -- a run that diverges stops, keeping its last checkpoint
    (
        "lr 1e30 (parameters overflow)",
        "train --data-dir {data} --model fc --lr 1e30 --epochs 3 --out {tmp}/lr30 --no-progress",
        "training diverged",
    ),
    ("lr 1e308", "train --data-dir {data} --model fc --lr 1e308 --out {tmp}/lr308 --no-progress", "training diverged"),
    (
        "lr 1e8 with --strict",
        "train --data-dir {data} --model fc --lr 1e8 --epochs 2 --strict --out {tmp}/lr8 --no-progress",
        "iteration cap",
    ),
    # -- options that crashed or passed silently
    (
        "seed beyond 64 bits",
        "train --data-dir {data} --seed 99999999999999999999999",
        "--seed: 99999999999999999999999 must be an integer in [0, 2**64)",
    ),
    ("pool larger than the equilibrium", "train --data-dir {data} --pool 40", "pool 40 must divide the equilibrium's side 28"),
    ("pool that does not divide it", "train --data-dir {data} --pool 5", "pool 5 must divide the equilibrium's side 28"),
    ("fc with --channels", "train --data-dir {data} --model fc --channels 8", "channels [8] applies to the convolutional models"),
    ("fc with --pool", "train --data-dir {data} --model fc --pool 2", "pool 2 applies to single-conv"),
    ("single-conv with --width", "train --data-dir {data} --width 8", "width 8 applies to fc"),
    ("m 1e-300 (0 in float32)", "train --data-dir {data} --model fc --m 1e-300", "below the resolution of torch.float32"),
    ("tol 1e10", "train --data-dir {data} --model fc --tol 1e10", "--tol: 1e10 must be a number in (0, 1)"),
    (
        "time budget shorter than a batch",
        "train --data-dir {data} --model fc --time-budget 0.0000001s",
        "ran out before the first",
    ),
    ("device cpu:5", "train --data-dir {data} --device cpu:5", "there is one CPU device"),
    ("out empty", "train --data-dir {data} --out ''", "must not be empty"),
    ("max-alpha without tuning", "train --data-dir {data} --no-tune-alpha --max-alpha 0.5", "does nothing with tune_alpha off"),
    ("average of an unknown kind", "train --data-dir {data} --average mean", "the kind is one of off, ema, swa"),
    ("ema decay 1", "train --data-dir {data} --average ema:1", "EMA's decay is a number in (0, 1)"),
    ("erase probability 2", "train --data-dir {data} --erase 2", "erase"),
    ("eval weights of no kind", "eval {run} --weights best", "--weights: invalid choice: 'best'"),
    ("lr-step with one-cycle", "train --data-dir {data} --lr-schedule one-cycle --lr-step 3", "does nothing with lr_schedule"),
    ("image folder with one class", "train --dataset folder --data-dir {one_class}", "a classifier needs at least two"),
    ("image folder, first image 12000x2", "train --dataset folder --data-dir {wide_images}", "12000x2 pixels"),
    ("certify --out a folder", "certify {run} --out {tmp}", "is a folder; give a file name"),
    ("certify --out in a missing folder", "certify {run} --out {missing}/dir/c.json", "does not exist"),
    ("bench --out a file", "bench --out {file} --report-only", "not a folder"),
    ("demo --batch-size 100000000", "demo --batch-size 100000000", "out of memory"),
    ("demo --alpha 1e300", "demo --alpha 1e300", "step size alpha must be > 0 and at most"),
    ("plot a missing run", "plot {missing}", "not found"),
    # -- hand-edited checkpoints: each entry is checked against the checkpoint schema
    ("checkpoint: tensors file a folder", "eval {tensors_folder_run} --data-dir {data}", "is not a regular file"),
    ("checkpoint: tensors file a link to /dev/zero", "eval {dev_zero_run} --data-dir {data}", "is not a regular file"),
    ("checkpoint: JSON nested 100,000 deep", "eval {deep_run} --data-dir {data}", "nested too deeply"),
    ("checkpoint: batch 10**9", "train --resume {batch_run} --data-dir {data}", "batch 1000000000 is beyond the 1 batches"),
    ("checkpoint: history not a list", "eval {history_run} --data-dir {data}", "entry 'history' must be a list"),
    ("checkpoint: epoch -1", "eval {epoch_negative_run} --data-dir {data}", "entry 'epoch' must be an integer"),
    ("checkpoint: epoch 10**18", "train --resume {epoch_huge_run} --data-dir {data}", "entry 'epoch' must be an integer"),
    ("checkpoint: epoch a string", "eval {epoch_text_run} --data-dir {data}", "entry 'epoch' must be an integer"),
    ("checkpoint: running.examples -5", "train --resume {running_run} --data-dir {data}", "entry 'running' must be"),
    ("checkpoint: data.std [0]", "eval {std_run} --data-dir {data}", "entry 'data' must be"),
    ("checkpoint: data.classes []", "predict {classes_run} {png}", "entry 'data' must be"),
    ("checkpoint: data.image_size 0", "predict {size_run} {png}", "entry 'data' must be"),
    ("checkpoint: data.channels 3 against the weights", "predict {channels_run} {png}", "does not match its model"),
    ("resume: metrics.csv a folder", "train --resume {csv_folder_run} --data-dir {data} --epochs 2", "metrics.csv is a folder"),
]

#: (the copy of the reference run, the checkpoint entry changed, its new value) for :func:`prepare`.
EDITED_CHECKPOINTS: list[tuple[str, str, object]] = [
    ("batch_run", "batch", 10**9),
    ("history_run", "history", {"epoch": 1}),
    ("epoch_negative_run", "epoch", -1),
    ("epoch_huge_run", "epoch", 10**18),
    ("epoch_text_run", "epoch", "one"),
    ("running_run", "running.examples", -5),
    ("std_run", "data.std", [0]),
    ("classes_run", "data.classes", []),
    ("size_run", "data.image_size", 0),
    (
        "channels_run",
        "data",
        {"name": "fashion-mnist", "channels": 3, "image_size": 28, "classes": ["a", "b"], "mean": [0] * 3, "std": [1] * 3},
    ),
]
_HELD_LOCKS: list = []  # locks that prepare() holds for the rest of the process (a run folder "in use")

TRAIN = ["--model", "fc", "--width", "16", "--epochs", "6", "--batch-size", "8", "--test-batch-size", "64"]
TIMING = {"forward_seconds", "backward_seconds", "epoch_seconds", "elapsed_seconds"}


def _mondeq(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mondeq", *args], capture_output=True, text=True, env=env, **kwargs)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` pixels (what a decompression bomb looks like to a reader)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


class _HugeArray:
    """Pickles as numpy's array constructor asked for a terabyte (a CIFAR batch built to exhaust memory)."""

    def __reduce__(self):
        import numpy as np

        reconstruct = np.empty(0).__reduce__()[0]  # numpy's _reconstruct, under this numpy's module name
        return (reconstruct, (np.ndarray, (2**40,), b"b"))


def prepare(root: Path) -> dict[str, str]:
    """The files the bad-input table refers to, made in ``root``."""
    import numpy as np
    from PIL import Image

    from mondeq.checkpoint import save_checkpoint
    from mondeq.data import write_synthetic_mnist

    places = {"data": write_synthetic_mnist(root / "data", train=64, test=32), "tmp": root, "missing": root / "missing"}
    places["file"] = root / "file.txt"
    places["file"].write_text("not an image, not a folder")
    run = places["run"] = root / "run"
    result = _mondeq("train", "--data-dir", str(places["data"]), "--out", str(run), "--no-progress", *TRAIN[:4])
    if result.returncode != 0:
        raise SystemExit(f"could not train the reference run:\n{result.stderr}")
    for name in ("keyless_run", "shape_run", "nan_run", "corrupt_run"):
        places[name] = root / name
        shutil.copytree(run, places[name])
    meta = json.loads((run / "checkpoint.json").read_text())
    del meta["running"]
    (places["keyless_run"] / "checkpoint.json").write_text(json.dumps(meta))
    meta = json.loads((run / "checkpoint.json").read_text())
    meta["model"]["width"] += 1
    meta["train"]["model_options"]["width"] = meta["model"]["width"]
    (places["shape_run"] / "checkpoint.json").write_text(json.dumps(meta))
    (places["corrupt_run"] / "checkpoint.json").write_text("{not json")
    from mondeq.models import load_model

    model, meta = load_model(run)
    next(model.parameters()).data[0] = float("nan")
    keep = {k: v for k, v in meta.items() if k not in ("format", "tensors", "tensors_sha256", "optimizer")}
    save_checkpoint(places["nan_run"] / "checkpoint", model, None, keep)
    places["png"] = root / "image.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(places["png"])
    places["bad_export"] = root / "damaged.pt2"
    places["bad_export"].write_bytes(b"PK\x03\x04 not a whole archive")
    places["bomb"] = _png_header_only(root / "bomb.png", 30000, 30000)
    places["symlink_dir"] = root / "plots-link"
    (root / "elsewhere").mkdir()
    places["symlink_dir"].symlink_to(root / "elsewhere", target_is_directory=True)
    svhn = places["svhn73"] = root / "svhn73"
    svhn.mkdir()
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    (svhn / "train_32x32.mat").write_bytes(header.ljust(116) + b"\x00" * 8 + b"\x00\x02IM" + b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    cifar = places["cifar_bomb"] = root / "cifar"
    (cifar / "cifar-10-batches-py").mkdir(parents=True)
    batch = pickle.dumps({b"data": _HugeArray(), b"labels": [0]}, protocol=2)
    (cifar / "cifar-10-batches-py" / "data_batch_1").write_bytes(batch)
    _damaged_checkpoints(run, root, places)
    for name, classes, shape in (("one_class", ["only"], (28, 28)), ("wide_images", ["a", "b"], (2, 12000))):
        for split in ("train", "test"):
            for label in classes:
                (root / name / split / label).mkdir(parents=True)
                Image.fromarray(np.zeros(shape, dtype=np.uint8)).save(root / name / split / label / "0.png")
        places[name] = root / name
    from mondeq.files import RunLock

    places["locked_run"] = root / "locked_run"
    shutil.copytree(run, places["locked_run"])
    _HELD_LOCKS.append(RunLock(places["locked_run"]).acquire())
    return {k: str(v) for k, v in places.items()}


def _damaged_checkpoints(run: Path, root: Path, places: dict) -> None:
    """Copies of ``run`` whose checkpoint was edited by hand (:data:`EDITED_CHECKPOINTS`) or whose
    files were replaced: the tensors file by a folder or a link to an endless device, the JSON by
    one nested 100,000 deep, ``metrics.csv`` by a folder."""
    meta = json.loads((run / "checkpoint.json").read_text())
    for name, key, value in EDITED_CHECKPOINTS:
        copy = places[name] = root / name
        shutil.copytree(run, copy)
        edited = json.loads(json.dumps(meta))
        *parents, last = key.split(".")
        target = edited
        for parent in parents:
            target = target[parent]
        target[last] = value
        (copy / "checkpoint.json").write_text(json.dumps(edited))
    for name in ("tensors_folder_run", "dev_zero_run", "deep_run", "csv_folder_run"):
        places[name] = root / name
        shutil.copytree(run, places[name])
    tensors = places["tensors_folder_run"] / meta["tensors"]
    tensors.unlink()
    tensors.mkdir()
    tensors = places["dev_zero_run"] / meta["tensors"]
    tensors.unlink()
    tensors.symlink_to("/dev/zero")
    (places["deep_run"] / "checkpoint.json").write_text('{"format": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (places["csv_folder_run"] / "metrics.csv").unlink()
    (places["csv_folder_run"] / "metrics.csv").mkdir()


def bad_inputs(root: Path) -> list[dict[str, object]]:
    """Run every :data:`BAD_INPUTS` line; what each answered."""
    places = prepare(root)
    rows = []
    for what, line, fragment in BAD_INPUTS:
        result = _mondeq(*shlex.split(line.format(**places)), timeout=300)
        lines = [text for text in result.stderr.strip().splitlines() if text.strip()]
        rows.append(
            {
                "what": what,
                "command": "mondeq " + line,
                "code": result.returncode,
                "answer": lines[-1] if lines else "",
                "ok": result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr and fragment in lines[0],
            }
        )
        print(f"{'ok ' if rows[-1]['ok'] else 'BAD'} {what}: {rows[-1]['answer']}", flush=True)
    return rows


def _final(run: Path) -> tuple[dict, list]:
    from mondeq.checkpoint import load_checkpoint

    meta, state, _ = load_checkpoint(run)
    return state, [{k: v for k, v in row.items() if k not in TIMING} for row in meta["history"]]


def _state(run: Path) -> str:
    """``fresh`` (nothing committed yet), ``resumable`` or ``unresumable``."""
    from mondeq.checkpoint import CheckpointError, load_checkpoint

    if not (run / "checkpoint.json").exists():
        return "fresh"
    try:
        load_checkpoint(run)
        return "resumable"
    except CheckpointError:
        return "unresumable"


def fault_injection(root: Path, signals: int, seed: int) -> dict[str, object]:
    """Deliver ``signals`` interruptions to training runs; counts of what was found after each."""
    import torch

    rng = random.Random(seed)
    data = root / "data"
    from mondeq.data import write_synthetic_mnist

    write_synthetic_mnist(data, train=1024, test=256)
    common = ["--data-dir", str(data), "--no-progress", "--threads", "1", "--checkpoint-every", "0.0001", *TRAIN]
    reference = root / "reference"
    started = time.perf_counter()
    if _mondeq("train", *common, "--out", str(reference)).returncode != 0:
        raise SystemExit("the uninterrupted reference run failed")
    duration = time.perf_counter() - started
    expected_state, expected_history = _final(reference)
    kinds = ["SIGKILL", "SIGTERM", "SIGINT", "SIGINT twice"]
    counts = {"signals": 0, "inspected": 0, "resumable": 0, "fresh": 0, "unresumable": 0, "finished": 0, "identical": 0}
    by_kind = {k: 0 for k in kinds}
    exit_codes: dict[str, dict[int, int]] = {k: {} for k in kinds}
    run_index, run = 0, root / "run-0"
    while counts["signals"] < signals:
        resume = (run / "checkpoint.json").exists()
        args = ["train", "--resume", str(run)] if resume else ["train", *common, "--out", str(run)]
        command = [sys.executable, "-m", "mondeq", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        time.sleep(rng.uniform(0.2, duration))
        if process.poll() is None:
            kind = rng.choice(kinds)
            process.send_signal(signal.SIGKILL if kind == "SIGKILL" else signal.SIGTERM if kind == "SIGTERM" else signal.SIGINT)
            if kind == "SIGINT twice":
                time.sleep(rng.uniform(0.0, 0.05))
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
            _, stderr = process.communicate()
            counts["signals"] += 1
            by_kind[kind] += 1
            exit_codes[kind][process.returncode] = exit_codes[kind].get(process.returncode, 0) + 1
            if "Traceback" in stderr.decode():
                print(stderr.decode(), file=sys.stderr)
            state = _state(run)
            counts["inspected"] += 1
            counts[state] += 1
            print(f"signal {counts['signals']:3d}: {kind:12s} -> exit {process.returncode:4d}, {state}", flush=True)
            continue
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"an uninterrupted stretch failed:\n{stderr.decode()}")
        state, history = _final(run)
        counts["finished"] += 1
        same = history == expected_history and all(torch.equal(state[k], expected_state[k]) for k in expected_state)
        counts["identical"] += int(same)
        print(f"run {run_index} finished: {'identical' if same else 'DIFFERENT'}", flush=True)
        run_index += 1
        run = root / f"run-{run_index}"
    return {"counts": counts, "by_kind": by_kind, "exit_codes": exit_codes, "reference_seconds": duration}


def _shown_answer(answer: object) -> str:
    """An answer as the table shows it: the temporary folder as ``{tmp}``, at most 240 characters."""
    text = re.sub(r"/tmp/mondeq-reliability-[^/\s]+/inputs", "{tmp}", str(answer)).replace("|", "/")
    return text if len(text) <= 240 else text[:237] + "..."


def write_report(out: Path, faults: dict, rows: list[dict], commit: str) -> None:
    c = faults["counts"]
    kinds = ", ".join(f"{k} {n}" for k, n in faults["by_kind"].items())
    codes = "; ".join(
        f"{kind}: " + ", ".join(f"{code} ×{n}" for code, n in sorted(seen.items())) for kind, seen in faults["exit_codes"].items()
    )
    table = "\n".join(
        f"| {r['what']} | `{r['command']}` | {r['code']} | {_shown_answer(r['answer'])} | {'yes' if r['ok'] else '**no**'} |"
        for r in rows
    )
    header = "| signals | states inspected | resumable | fresh (nothing saved yet) | unresumable | finished runs | identical |"
    numbers = (
        f"| {c['signals']} | {c['inspected']} | {c['resumable']} | {c['fresh']} | **{c['unresumable']}** | "
        f"{c['finished']} | **{c['identical']} / {c['finished']}** |"
    )
    out.write_text(
        f"""# Reliability: nothing lost, nothing silent

Measured by `python scripts/reliability.py` at commit `{commit}` (2 CPU cores). Rerun it to
reproduce; `tests/test_reliability.py` and `tests/test_cli_errors.py` check the same
properties on every CI run.

## Interrupting training at random moments

A small fully connected monDEQ (width 16, 1,024 synthetic MNIST-format images, 6 epochs of 128
batches) is trained with a checkpoint before every batch (`--checkpoint-every 0.0001`) so that
signals often land inside a save. Each process gets one signal at a uniformly random moment,
the run folder is inspected (a state is *resumable* when its checkpoint loads; *fresh* when
nothing was committed yet, so the run simply starts again) and the run is resumed with
`mondeq train --resume`. A finished run is compared with an uninterrupted run of the same
command: parameters bit for bit, metrics with timing columns aside.

{header}
|---|---|---|---|---|---|---|
{numbers}

Signals: {kinds}. Exit codes: {codes} (130 / 143: stopped by SIGINT / SIGTERM after saving; -9: killed; -2 / -15: the
signal came during start-up or after the loop, before the handlers were installed or after they
were removed, when there was nothing to save; 0: it came after the last checkpoint of a finished run). The
uninterrupted reference run took {faults["reference_seconds"]:.1f} s.

How: SIGINT and SIGTERM only set a flag that the loop honours between batches (and between
evaluation batches), so a step, the position in the epoch and the running totals always change
together; a second Ctrl-C stops at once without saving, leaving the last checkpoint intact.
A checkpoint is one JSON file (the commit point) naming a content-addressed tensors file; each
is written to a temporary file, fsynced and renamed, so a crash leaves the old checkpoint or
the new one. `--checkpoint-every MINUTES` (default 10) bounds what `kill -9` can lose.

## Bad inputs

Each line must end with exit code 2 and a one-line error that names the problem (no
traceback; `mondeq --debug COMMAND ...` shows it). Among them, the ways a run could be lost: a
second `mondeq train` into a folder that holds a run (refused unless `--resume` or
`--overwrite`), a folder in use by another training (an advisory lock, released by the system
however its holder ends), and divergence (a non-finite loss or parameter stops the run without
saving, so the last checkpoint is the last good one; `--strict` also stops a solver stuck at its
iteration cap).

| what is wrong | command | exit | the answer | one line, named |
|---|---|---|---|---|
{table}

Answered by the library rather than the command line (tests in `tests/test_safety.py`,
`tests/test_properties.py`, `tests/test_data.py`, `tests/test_run_safety.py`): weights that hold
NaN or Inf are refused by the layer; second-order gradients through the implicit
layer are refused with `DoubleBackwardError`; in-place parameter edits (`p.data.mul_`) are
detected and the cached solver maps rebuilt; layers pickle and deep-copy after a forward; a
batch of 0 returns an empty equilibrium; 16-bit PNG and float TIFF images are scaled to the
0..255 range of the training data.
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/reliability.md")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    with tempfile.TemporaryDirectory(prefix="mondeq-reliability-") as folder:
        root = Path(folder)
        rows = bad_inputs(root / "inputs")
        faults = fault_injection(root / "faults", args.signals, args.seed)
    write_report(Path(args.out), faults, rows, commit)
    print(json.dumps(faults["counts"]))


if __name__ == "__main__":
    main()
