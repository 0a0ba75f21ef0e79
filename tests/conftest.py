import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each worker gets one torch thread, set once before any test: two workers with two threads
    # each on two cores make OpenMP spin. (Changing the count back and forth within a process
    # breaks batched solves in torch 2.13, so tests never change it themselves.)
    torch.set_num_threads(1)
