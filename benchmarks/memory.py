"""Run the 'memory' benchmark alone: `python benchmarks/memory.py [--tiny]` (writes docs/benchmarks.md)."""

import sys

from mondeq.benchmarks.report import run_all

if __name__ == "__main__":
    print(run_all(["memory"], tiny="--tiny" in sys.argv))
