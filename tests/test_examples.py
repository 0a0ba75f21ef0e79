"""Every script in examples/ runs at tiny size and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[1] / "examples"
#: (script, extra arguments, text its output must contain)
RUNS = [
    ("own_training_loop.py", [], "backward iterations"),
    ("numpy_arrays.py", [], "test accuracy"),
    ("compare_solvers.py", [], "dr:"),
    ("certify_robustness.py", [], "certified"),
    ("own_monotone_layer.py", [], "GMRES iterations"),
    ("own_monotone_layer.py", ["--operator", "fft"], "test accuracy"),
    ("nonsquare_images.py", [], "tiers ((28, 20), (14, 10))"),
    ("graph_equilibrium.py", [], "features alone"),
]


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES.glob("*.py")} == {name for name, _, _ in RUNS}


@pytest.mark.parametrize("name, arguments, expected", RUNS, ids=[" ".join([name, *args]) for name, args, _ in RUNS])
def test_example_runs_tiny(name, arguments, expected):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(EXAMPLES / name), "--tiny", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
