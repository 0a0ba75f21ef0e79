"""Smoke test: every benchmark runs on a toy configuration and the report is written."""

import json

import pytest

from mondeq.benchmarks import sections
from mondeq.benchmarks.report import run_all


@pytest.mark.slow
def test_every_benchmark_runs_tiny(tmp_path):
    path = run_all(tiny=True, out=tmp_path)
    text = path.read_text()
    results = json.loads((tmp_path / "bench-tiny" / "results.json").read_text())
    assert set(results) == set(sections())
    for title in ("Solver comparison", "Resolvent cost", "Training step", "Peers", "Memory", "Scaling"):
        assert title in text
    assert "torch threads" in text and "mondeq bench --tiny" in text
    robustness = (tmp_path / "robustness-tiny.md").read_text()  # a section with a page of its own
    assert "certified / PGD at eps=0.5" in robustness and "Robustness" not in text
    rows = results["robustness"]["rows"]
    assert all(c <= p for r in rows.values() for c, p in zip(r["certified_accuracy"], r["pgd_accuracy"]))
    assert list((tmp_path / "bench-tiny").glob("*.png"))
    # the numbers are real measurements, not placeholders
    assert all(r["solve_ms"] > 0 and r["floor_ms"] > 0 for r in results["resolvent"]["rows"])
    assert all(r["mondeq_ms"] > 0 and r["reference_ms"] > 0 for r in results["training_step"]["rows"])
    implicit = [r["saved_mb"] for r in results["memory"]["rows"] if r["mode"] == "implicit"]
    unrolled = [r["saved_mb"] for r in results["memory"]["rows"] if r["mode"] == "unrolled"]
    assert implicit[0] == implicit[-1] and unrolled[-1] > unrolled[0]
