"""Run the 'scaling' benchmark alone: `python benchmarks/scaling.py [--tiny]` (writes docs/benchmarks.md)."""

import sys

from mondeq.benchmarks.report import run_all

if __name__ == "__main__":
    print(run_all(["scaling"], tiny="--tiny" in sys.argv))
