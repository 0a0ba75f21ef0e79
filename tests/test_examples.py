"""Every script in examples/ runs at tiny size and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[1] / "examples"
EXPECTED = {
    "own_training_loop.py": "backward iterations",
    "numpy_arrays.py": "test accuracy",
    "compare_solvers.py": "dr:",
    "certify_robustness.py": "certified",
    "own_monotone_layer.py": "GMRES iterations",
}


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_tiny(name):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(EXAMPLES / name), "--tiny"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert EXPECTED[name] in result.stdout
