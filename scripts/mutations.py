#!/usr/bin/env python3
"""Check that the suite catches one-line bugs in the bounds behind certificates.

Each mutation below is a one-line change to ``src/mondeq`` that would make a certificate, a
convergence guarantee or a saved run unsound. For each, the source is copied to a temporary folder,
the change made there, and the tests named beside it run against the copy (``PYTHONPATH``): the
mutation is *caught* when they fail. The working tree is never touched.

    python3 scripts/mutations.py            # every mutation, about 2 minutes on 2 cores
    python3 scripts/mutations.py --list     # the list only

Exit status 1 when a mutation survives (or its line is no longer found: update the list).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOUNDNESS = "tests/test_soundness.py"

#: (what it breaks, file under src/mondeq, the line's text, its replacement, the tests that must fail)
MUTATIONS = [
    (
        "a certificate's interval iteration allowed to start from a stored (unsound) box",
        "robust/interval.py",
        "if start is not None and rounding:",
        "if start is not None and rounding and False:",
        ["tests/test_certified.py::test_a_warm_started_interval_iteration_reaches_the_cold_fixed_point"],
    ),
    (
        "the matrix DFT's per-frequency product with the imaginary term's sign flipped",
        "operators/fourier.py",
        "real = torch.bmm(parts[0], a_real).baddbmm_(parts[1], a_imag, alpha=-1)",
        "real = torch.bmm(parts[0], a_real).baddbmm_(parts[1], a_imag, alpha=1)",
        ["tests/test_fourier.py::test_single_conv_multiply_and_resolvent_equal_dense"],
    ),
    (
        "single-conv pooling norm 1/k -> 1/k^2 (Lipschitz bound 2x too small)",
        "models/kinds.py",
        "pool_norm=lambda c: 1.0 / c.pool,",
        "pool_norm=lambda c: 1.0 / c.pool**2,",
        [
            f"{SOUNDNESS}::test_the_pooling_norms_are_the_dense_matrix_norms",
            f"{SOUNDNESS}::test_a_lipschitz_model_s_exact_norm_product_is_gamma",
        ],
    ),
    (
        "sqrt(2) dropped from the certified radius",
        "robust/certificates.py",
        "return torch.clamp(margin, min=0) / (math.sqrt(2) * lipschitz)",
        "return torch.clamp(margin, min=0) / lipschitz",
        [f"{SOUNDNESS}::test_the_certified_radius_is_exact_on_a_linear_map"],
    ),
    (
        "/m -> *m in the equilibrium's Lipschitz bound",
        "robust/lipschitz.py",
        "return (1 + self.slack) * self.input_norm / self.m",
        "return (1 + self.slack) * self.input_norm * self.m",
        [f"{SOUNDNESS}::test_the_estimated_lipschitz_bounds_scale_as_one_over_m"],
    ),
    (
        "/m -> *m in the logits' Lipschitz bound",
        "robust/lipschitz.py",
        "return (1 + self.slack) ** 2 * self.readout_norm * self.input_norm / self.m",
        "return (1 + self.slack) ** 2 * self.readout_norm * self.input_norm * self.m",
        [f"{SOUNDNESS}::test_the_estimated_lipschitz_bounds_scale_as_one_over_m"],
    ),
    (
        "forward-backward's admissible step 2m/L^2 -> 4m/L^2",
        "solvers/forward_backward.py",
        "bound = 2 * operator.m / lipschitz**2",
        "bound = 4 * operator.m / lipschitz**2",
        [f"{SOUNDNESS}::test_forward_backward_clamps_a_step_just_above_its_limit"],
    ),
    (
        "the explicit residual check skipped",
        "solvers/base.py",
        "if not method.exact_pre and (residual <= tol or iterations >= max_iter):",
        "if False:",
        [f"{SOUNDNESS}::test_a_derived_residual_cannot_fake_convergence"],
    ),
    (
        "fsync dropped before the atomic rename",
        "files.py",
        "        os.fsync(fd)\n        os.close(fd)\n        fd = -1\n        os.replace(tmp, path)",
        "        os.close(fd)\n        fd = -1\n        os.replace(tmp, path)",
        [f"{SOUNDNESS}::test_an_atomic_write_syncs_the_file_before_it_replaces_the_old_one"],
    ),
    (
        "the solve's error bound without its ||Wr||/m term",
        "robust/certificates.py",
        "bound = residual.norm(dim=1) + op.multiply(residual).norm(dim=1) / op.m",
        "bound = residual.norm(dim=1)",
        [f"{SOUNDNESS}::test_the_equilibrium_error_bound_holds_for_solves_stopped_early"],
    ),
    (
        "the interval operator's scaling 2(1-m) -> 4(1-m) (|W| no longer contracts)",
        "operators/interval.py",
        "d = (row_sums + column_sums) / (2 * (1 - m))",
        "d = (row_sums + column_sums) / (4 * (1 - m))",
        [f"{SOUNDNESS}::test_the_conv_interval_operator_is_monotone_and_its_magnitude_contracts"],
    ),
    (
        "the start box without its 1/(1 - kappa)",
        "robust/interval.py",
        "weighted = v * ((positive / v).amax(dim=1, keepdim=True) / (1 - kappa))",
        "weighted = v * (positive / v).amax(dim=1, keepdim=True)",
        [f"{SOUNDNESS}::test_the_start_box_and_truncated_gradients_keep_the_bounds_sound"],
    ),
    (
        "the convolutional interval map with W and |W| swapped",
        "operators/interval.py",
        "out = _CONVOLUTIONS[len(self.size)](padded, torch.cat(weights, dim=0), groups=2)",
        "out = _CONVOLUTIONS[len(self.size)](padded, torch.cat(weights[::-1], dim=0), groups=2)",
        [f"{SOUNDNESS}::test_the_conv_interval_operator_is_monotone_and_its_magnitude_contracts"],
    ),
]


def run(mutation, workdir: Path) -> str:
    """``caught``, ``SURVIVED`` or ``LINE NOT FOUND`` for one mutation."""
    _, path, line, replacement, tests = mutation
    src = workdir / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = src / "mondeq" / path
    text = target.read_text()
    if text.count(line) != 1:
        return "LINE NOT FOUND"
    target.write_text(text.replace(line, replacement))
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    return "caught" if done.returncode == 1 else "SURVIVED" if done.returncode == 0 else f"error (pytest exit {done.returncode})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    args = parser.parse_args()
    if args.list:
        for what, path, *_ in MUTATIONS:
            print(f"{path}: {what}")
        return 0
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        for mutation in MUTATIONS:
            outcome = run(mutation, Path(folder))
            failures += outcome != "caught"
            print(f"{outcome:>16}  {mutation[1]}: {mutation[0]}", flush=True)
    print(f"{len(MUTATIONS) - failures}/{len(MUTATIONS)} mutations caught")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
