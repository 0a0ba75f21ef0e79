"""Run the 'peers' benchmark alone: `python benchmarks/peers.py [--tiny]` (writes docs/benchmarks.md)."""

import sys

from mondeq.benchmarks.report import run_all

if __name__ == "__main__":
    print(run_all(["peers"], tiny="--tiny" in sys.argv))
