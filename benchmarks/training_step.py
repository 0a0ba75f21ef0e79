"""Run the 'training_step' benchmark alone: `python benchmarks/training_step.py [--tiny]` (writes docs/benchmarks.md)."""

import sys

from mondeq.benchmarks.report import run_all

if __name__ == "__main__":
    print(run_all(["training_step"], tiny="--tiny" in sys.argv))
