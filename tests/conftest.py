import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Each test process compiles (torch.compile) into a kernel cache of its own, new for the session:
# kernels written by another process (a concurrent xdist worker, or a run under another
# ATEN_CPU_CAPABILITY, as CI runs the suite three times) are never loaded. A compiled iteration
# returned NaN once with the cache shared that way (2026-12-08; not reproduced with a fresh cache).
_KERNELS = tempfile.mkdtemp(prefix="mondeq-test-kernels-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _KERNELS
atexit.register(shutil.rmtree, _KERNELS, ignore_errors=True)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each worker gets one torch thread, set once before any test: two workers with two threads
    # each on two cores make OpenMP spin. (Changing the count back and forth within a process
    # breaks batched solves in torch 2.13, so tests never change it themselves.)
    torch.set_num_threads(1)


ROOT = Path(__file__).parents[1]
RUN_FILES = ("checkpoint.json", "metrics.csv", ".lock")


def pytest_sessionfinish(session, exitstatus):
    """A test that trains into the working directory leaves a run beside the README (one was once
    committed that way): fail the session instead."""
    stray = [name for name in RUN_FILES if (ROOT / name).exists()] + [p.name for p in ROOT.glob("checkpoint-*.safetensors")]
    if stray and not os.environ.get("PYTEST_XDIST_WORKER"):
        print(f"\ntests left run files in {ROOT}: {', '.join(stray)}")
        session.exitstatus = 1
