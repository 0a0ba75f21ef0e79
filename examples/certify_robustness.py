"""Certify a trained monDEQ's robustness: its l2 Lipschitz bound, and the test images whose
prediction provably cannot change under any perturbation of norm eps (Pabbaraju, Winston &
Kolter, ICLR 2021), beside the accuracy under a PGD attack (an upper bound on robust accuracy).
Without a run folder, trains a small fully connected model on synthetic data first:

    python examples/certify_robustness.py [RUN_DIR] [--tiny]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from mondeq.data import load_dataset, write_synthetic_mnist
from mondeq.models import load_model
from mondeq.robust import evaluate_robustness, lipschitz_bound


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?", help="a run folder of `mondeq train`")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data, run = None, args.run
        if run is None:
            data = str(write_synthetic_mnist(Path(scratch) / "data", 64 if args.tiny else 512, 64))
            run = str(Path(scratch) / "run")
            options = ["--model", "fc", "--width", "16", "--m", "5", "--data-dir", data, "--out", run, "--no-progress"]
            subprocess.run([sys.executable, "-m", "mondeq", "train", *options], check=True, capture_output=True)
        model, meta = load_model(run)
        model.layer.configure(tol=1e-4)  # margins of the true equilibrium
        bound = lipschitz_bound(model)
        test = load_dataset(meta["train"]["dataset"], "test", data or meta["train"].get("data_dir")).subset(
            16 if args.tiny else 500
        )
        report = evaluate_robustness(model, test, [0.1, 0.5, 1.0], bound.logits, pgd_steps=2 if args.tiny else 10)
        print(f"Lipschitz bound of the logits: {bound.logits:.3g} (||U|| = {bound.input_norm:.3g}, m = {bound.m:g})")
        print(f"clean accuracy {report['clean_accuracy']:.3f} on {report['examples']} images")
        for eps, certified, pgd in zip(report["eps"], report["certified_accuracy"], report["pgd_accuracy"]):
            print(f"eps {eps:g}: certified {certified:.3f} <= under PGD {pgd:.3f}")


if __name__ == "__main__":
    main()
