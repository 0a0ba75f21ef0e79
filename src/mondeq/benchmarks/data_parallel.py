"""Training throughput of 1 process against 2 data-parallel processes (torchrun, gloo).

The same single-conv preset and global batch (128: one process of 128, or two of 64 each),
on the first ``images`` Fashion-MNIST training images; throughput = images / training time of
the epoch, read from the run's ``metrics.csv``. Threads are split so both runs use all cores.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..data import load_dataset, write_synthetic_mnist
from ..errors import DataError
from . import Section, markdown_table


def train_throughput(processes: int, images: int, channels: int, threads: int, folder: Path, data_dir: str | None) -> float:
    out = folder / f"p{processes}"
    command = [
        "-m",
        "mondeq",
        "train",
        "--model",
        "single-conv",
        "--channels",
        str(channels),
        "--epochs",
        "1",
        "--batch-size",
        str(128 // processes),
        "--train-limit",
        str(images),
        "--test-limit",
        "200",
        "--no-tune-alpha",
        "--no-progress",
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    if data_dir:
        command += ["--data-dir", data_dir]
    if processes == 1:
        command = [sys.executable, *command]
    else:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
        command = [sys.executable, *launcher, *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    with open(out / "metrics.csv") as handle:
        row = list(csv.DictReader(handle))[-1]
    return images / float(row["epoch_seconds"])


def run(tiny: bool = False) -> dict:
    cores = os.cpu_count() or 1
    images, channels = (64, 4) if tiny else (3840, 54)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data_dir = None
        try:
            load_dataset("fashion-mnist", "test")
        except DataError:
            tiny = True
        if tiny:  # synthetic images in the real file format
            data_dir = str(write_synthetic_mnist(folder / "data", train=images, test=200))
        rows = []
        for processes in (1, 2):
            threads = max(1, cores // processes)
            rows.append(
                {
                    "processes": processes,
                    "threads_per_process": threads,
                    "images_per_second": train_throughput(processes, images, channels, threads, folder, data_dir),
                }
            )
    return {"rows": rows, "images": images, "channels": channels, "cores": cores}


def markdown(result: dict) -> str:
    base = result["rows"][0]["images_per_second"]
    lines = [
        f"single-conv ({result['channels']} channels), global batch 128, one epoch over {result['images']} training "
        f"images on this {result['cores']}-core machine.",
        "",
        *markdown_table(
            ["processes", "threads each", "images / s", "relative"],
            [
                [
                    r["processes"],
                    r["threads_per_process"],
                    f"{r['images_per_second']:.0f}",
                    f"{r['images_per_second'] / base:.2f}x",
                ]
                for r in result["rows"]
            ],
        ),
    ]
    return "\n".join(lines)


SECTION = Section(title="7. Data-parallel training: 1 against 2 processes", order=7, run=run, markdown=markdown)
