"""Run the 'solvers' benchmark alone: `python benchmarks/solvers.py [--tiny]` (writes docs/benchmarks.md)."""

import sys

from mondeq.benchmarks.report import run_all

if __name__ == "__main__":
    print(run_all(["solvers"], tiny="--tiny" in sys.argv))
