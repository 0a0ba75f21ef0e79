"""Compare forward-backward, Peaceman-Rachford and Douglas-Rachford on a trained checkpoint.

Solves the equilibria of one test batch with each method to a tight tolerance and prints the
iterations and time each needed (the same as `mondeq plot RUN` draws). Without a run folder,
trains a small fully connected model on synthetic MNIST-format data first:

    python examples/compare_solvers.py [RUN_DIR] [--tiny]
"""

import argparse
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from mondeq.data import Batches, load_dataset, write_synthetic_mnist
from mondeq.errors import StepSizeWarning, ignore_convergence_warnings
from mondeq.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?", help="a run folder of `mondeq train`")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = None
        run = args.run
        if run is None:
            data = str(write_synthetic_mnist(Path(scratch) / "data", 64 if args.tiny else 512, 64))
            run = str(Path(scratch) / "run")
            train = ["--model", "fc", "--width", "16" if args.tiny else "64", "--data-dir", data, "--out", run, "--no-progress"]
            subprocess.run([sys.executable, "-m", "mondeq", "train", *train], check=True, capture_output=True)
        model, meta = load_model(run)
        test = load_dataset(meta["train"]["dataset"], "test", data or meta["train"].get("data_dir"))
        x, _ = next(iter(Batches(test, 32)))
        for method in ("fb", "pr", "dr"):
            with (
                warnings.catch_warnings(),
                ignore_convergence_warnings(),
                model.layer.options(solver=method, tol=1e-6, max_iter=500),
            ):
                warnings.simplefilter("ignore", StepSizeWarning)  # FB picks its own step size m / L^2
                with torch.no_grad():
                    model(x)
            record = model.layer.stats.forward
            print(f"{method}: {record.iterations:4d} iterations, {1e3 * record.seconds:7.1f} ms, residual {record.residual:.1e}")


if __name__ == "__main__":
    main()
