"""Data-parallel training on 2 CPU processes with gloo, against one process over the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from datafiles import write_mnist_like
from mondeq.data import load_dataset
from mondeq.train import TrainConfig, Trainer

#: `mondeq` under torchrun, two processes on this machine.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mondeq"]


def config(out, batch_size):
    return TrainConfig(
        dataset="fashion-mnist",
        model="single-conv",
        epochs=1,
        batch_size=batch_size,
        test_batch_size=16,
        lr=3e-3,
        out=str(out),
        tune_alpha=False,
        model_options={"channels": [3], "tol": 1e-5, "max_iter": 500},
    )


def worker(rank, world, store, data_dir, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    train = load_dataset("fashion-mnist", "train", data_dir)
    test = load_dataset("fashion-mnist", "test", data_dir)
    trainer = Trainer(config(out, batch_size=8), train, test, progress=False)
    history = trainer.fit()
    torch.save({"state": trainer.model.state_dict(), "history": history}, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    os._exit(0)  # skip interpreter teardown of the gloo group, which rarely aborts on this machine


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = write_mnist_like(root / "data", train=48, test=20)
    out = root / "run"
    out.mkdir()
    mp.spawn(worker, args=(2, str(root / "store"), str(data), str(out)), nprocs=2, join=True)
    return root, data, out


def test_ranks_agree_and_match_one_process_over_the_global_batch(distributed_run):
    root, data, out = distributed_run
    rank0 = torch.load(out / "rank0.pt")
    rank1 = torch.load(out / "rank1.pt")
    for name, tensor in rank0["state"].items():
        assert torch.equal(tensor, rank1["state"][name]), name
    single = Trainer(
        config(root / "single", batch_size=16),
        load_dataset("fashion-mnist", "train", data),
        load_dataset("fashion-mnist", "test", data),
        progress=False,
    )
    history = single.fit()
    for name, tensor in single.model.state_dict().items():
        assert torch.allclose(rank0["state"][name], tensor, rtol=1e-4, atol=1e-6), name
    # metrics are reduced over both ranks: the same test accuracy and training loss
    assert rank0["history"][0]["test_accuracy"] == history[0]["test_accuracy"]
    assert rank0["history"][0]["train_loss"] == pytest.approx(history[0]["train_loss"], rel=1e-4)
    assert rank1["history"][0]["test_accuracy"] == history[0]["test_accuracy"]


def test_distributed_checkpoint_resumes_in_one_process(distributed_run):
    root, data, out = distributed_run
    from mondeq.checkpoint import load_checkpoint

    meta, state, _ = load_checkpoint(out)
    assert meta["world_size"] == 2 and meta["epoch"] == 1
    resumed = Trainer(
        TrainConfig(**{**config(out, 8).__dict__, "epochs": 2}),
        load_dataset("fashion-mnist", "train", data),
        load_dataset("fashion-mnist", "test", data),
        progress=False,
        on_existing="resume",
    )
    resumed.resume()
    assert all(torch.equal(state[k], v) for k, v in resumed.model.state_dict().items())
    history = resumed.fit()
    assert [row["epoch"] for row in history] == [1, 2]


@pytest.mark.slow
def test_torchrun_launches_the_train_command(tmp_path):
    data = write_mnist_like(tmp_path / "data", train=32, test=16)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = f"train --data-dir {data} --model fc --width 8 --epochs 1 --batch-size 8 --out {out} --no-progress"
    command = [*TORCHRUN, *train.split()]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test accuracy") == 1  # only rank 0 reports
    resumed = subprocess.run(
        [sys.executable, "-m", "mondeq", "eval", str(out), "--data-dir", str(data)], capture_output=True, text=True
    )
    assert resumed.returncode == 0 and '"examples": 16' in resumed.stdout


def poisoned_worker(rank, world, store, data_dir, out):
    from datetime import timedelta

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    train = load_dataset("fashion-mnist", "train", data_dir)
    trainer = Trainer(config(out, batch_size=8), train, train, progress=False)
    if rank == 1:
        with torch.no_grad():
            trainer.model.readout.bias.fill_(float("nan"))  # after DDP's initial broadcast: only rank 1 is poisoned
    try:
        trainer.fit()
        message = "no error"
    except FloatingPointError as error:
        message = str(error)
    with open(os.path.join(out, f"error{rank}.txt"), "w") as handle:
        handle.write(message)
    # Leave as `mondeq train` does after a failure: tearing down a process group whose DDP
    # reducer saw a forward without its backward can abort inside gloo.
    os._exit(0)


def test_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    data = write_mnist_like(tmp_path / "data", train=32, test=8)
    out = tmp_path / "run"
    out.mkdir()
    mp.spawn(poisoned_worker, args=(2, str(tmp_path / "store"), str(data), str(out)), nprocs=2, join=True)
    for rank in (0, 1):
        text = (out / f"error{rank}.txt").read_text()
        assert "the training loss of epoch 1, batch 1 is not finite on 1 of 2 ranks" in text


def _pid_of_rank(rank: int, marker: str) -> int | None:
    """The process of ``rank`` whose command line contains ``marker`` (read from /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and marker.encode() in cmdline and b"torch.distributed.run" not in cmdline:
            return int(pid)
    return None


@pytest.mark.slow
def test_a_killed_rank_is_named_as_the_root_cause(tmp_path):
    import signal
    import time

    data = write_mnist_like(tmp_path / "data", train=64, test=16)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = f"train --data-dir {data} --model fc --width 8 --epochs 100000 --batch-size 8 --out {out} --no-progress"
    process = subprocess.Popen([*TORCHRUN, *train.split()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    pid = _pid_of_rank(1, str(out))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "rank 0 lost contact with another rank" in stderr
    root_cause = stderr.split("Root Cause")[1]
    assert "rank      : 1" in root_cause and "SIGKILL" in root_cause
