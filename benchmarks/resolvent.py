"""Run the 'resolvent' benchmark alone: `python benchmarks/resolvent.py [--tiny]` (writes docs/benchmarks.md)."""

import sys

from mondeq.benchmarks.report import run_all

if __name__ == "__main__":
    print(run_all(["resolvent"], tiny="--tiny" in sys.argv))
