"""Smoke test: every benchmark runs on a toy configuration and the report is written."""

import json

import pytest

from mondeq.benchmarks import sections
from mondeq.benchmarks.report import run_all

# Two halves of about equal time, so that the two xdist workers share them.
GROUPS = {
    "processes": ["memory", "data_parallel", "threads", "step_profile"],
    "in-process": ["solvers", "resolvent", "training_step", "peers", "scaling", "certified", "time_to_accuracy", "evaluation"],
    "training": ["reuse", "export", "convergence"],
}


def test_groups_cover_every_section():
    assert sorted(sum(GROUPS.values(), [])) == sorted(sections())


def test_step_profile_categories():
    """A residual norm is not counted as a per-frequency inverse, nor an in-place add as something else."""
    from mondeq.benchmarks.step_profile import category

    assert category("aten::linalg_vector_norm") == "residual norms and reductions"
    assert category("aten::linalg_inv_ex") == "per-frequency inverses"
    assert category("aten::_fft_c2r") == "FFTs"
    products = "matrix products (DFT, per-frequency, readout)"
    assert category("aten::baddbmm_") == category("aten::addmm_") == category("aten::mm") == products
    assert category("aten::add_") == category("aten::clamp_min") == "elementwise passes"
    assert category("aten::copy_") == "layout copies and fills"
    assert category("aten::unheard_of") == "other operators"


@pytest.mark.slow
@pytest.mark.parametrize("group", GROUPS)
def test_every_benchmark_runs_tiny(tmp_path, group):
    names = GROUPS[group]
    path = run_all(names, tiny=True, out=tmp_path)
    text = path.read_text()
    results = json.loads((tmp_path / "bench-tiny" / "results.json").read_text())
    assert set(results) == set(names)
    titles = {s.title for n, s in sections().items() if n in names and s.page is None}
    assert all(title in text for title in titles)
    assert "torch threads" in text and "mondeq bench --tiny" in text
    assert list((tmp_path / "bench-tiny").glob("*.png"))
    if group == "processes":
        implicit = [r["saved_mb"] for r in results["memory"]["rows"] if r["mode"] == "implicit"]
        unrolled = [r["saved_mb"] for r in results["memory"]["rows"] if r["mode"] == "unrolled"]
        assert implicit[0] == implicit[-1] and unrolled[-1] > unrolled[0]
        assert all(r["images_per_second"] > 0 for r in results["data_parallel"]["rows"])
        assert len(results["threads"]["rows"]) == 6 and all(r["seconds_per_batch"] > 0 for r in results["threads"]["rows"])
        profiles = results["step_profile"]["profiles"]
        assert set(profiles) == {"monDEQ, matrix DFT", "monDEQ, FFTs (before)", "explicit CNN"}
        ffts = [profiles[name]["categories"].get("FFTs", 0.0) for name in ("monDEQ, FFTs (before)", "monDEQ, matrix DFT")]
        assert ffts[0] > ffts[1]
        return
    if group == "training":
        rows = {(r["reuse"], r["gradient"]): r for r in results["reuse"]["rows"]}
        cold = rows["off", "implicit"]["forward_iterations"]
        assert (
            rows["forward", "implicit"]["forward_iterations"] <= cold and rows["both", "implicit"]["forward_iterations"] <= cold
        )
        assert rows["off", "jacobian-free"]["backward_iterations"] == 0 and all(r["step_seconds"] > 0 for r in rows.values())
        converged = results["convergence"]["models"]  # two epochs each, a probe after each
        assert len(converged) == 2 and all(len(m["points"]) == 2 and m["epochs"] == 2 for m in converged.values())
        assert all(0 <= m["train_accuracy"] <= 1 and m["seconds"] > 0 for m in converged.values())
        return
    for title in ("Solver comparison", "Resolvent cost", "Training step", "Peers", "Scaling", "Time to accuracy"):
        assert title in text
    robustness = (tmp_path / "robustness-tiny.md").read_text()  # a section with a page of its own
    assert "certified / PGD at 0.5" in robustness and "certified / PGD at 0.05" in robustness and "Certified" not in text
    rows = results["certified"]["rows"]
    assert {r["norm"] for r in rows.values()} == {"l2", "linf"} and all(r["parameters"] <= 100_000 for r in rows.values())
    assert all(c <= p for r in rows.values() for c, p in zip(r["certified_accuracy"], r["pgd_accuracy"]))
    # the numbers are real measurements, not placeholders
    assert all(r["solve_ms"] > 0 and r["floor_ms"] > 0 for r in results["resolvent"]["rows"])
    assert all(r["mondeq_ms"] > 0 and r["paper_era_ms"] > 0 and r["compiled_ms"] > 0 for r in results["training_step"]["rows"])
    curves = results["time_to_accuracy"]["curves"]
    assert {"explicit CNN", "MLP"} < set(curves) and any(name.startswith("monDEQ") for name in curves)
    assert all(len(c["points"]) == 2 and all(0 <= a <= 1 for _, a in c["points"]) for c in curves.values())
    assert (tmp_path / "bench-tiny" / "time_accuracy.png").is_file()
    throughput = results["evaluation"]["rows"]
    assert {r["model"] for r in throughput} == {"single-conv", "multi-conv"} and all(
        r["images_per_second"] > 0 for r in throughput
    )


def test_train_for_counts_training_time_only_and_probes_at_each_mark():
    import time

    import torch
    import torch.nn.functional as F
    from torch import nn

    from mondeq.benchmarks.common import synthetic_images, train_for
    from mondeq.train import TrainConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    config = TrainConfig(model="fc", lr=1e-2, lr_schedule="one-cycle", time_budget=0.2 / 60, batch_size=8)
    probes = []

    def probe(model):
        time.sleep(0.2)  # an evaluation: not training time
        probes.append(model)
        return 0.5

    start = time.perf_counter()
    done = train_for(model, config, synthetic_images(8), lambda logits, x, y, t: F.cross_entropy(logits, y), marks=3, probe=probe)
    wall = time.perf_counter() - start
    assert len(done.points) == len(probes) == 3 and done.epochs >= 1
    seconds = [s for s, _ in done.points]
    assert seconds == sorted(seconds) and seconds[-1] == done.seconds >= 0.2
    assert wall >= done.seconds + 0.6  # the three probes' 0.6 s were not counted


def test_train_for_probes_the_average_when_the_config_asks_for_one():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mondeq.benchmarks.common import synthetic_images, train_for
    from mondeq.train import TrainConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    config = TrainConfig(model="fc", lr=1e-2, time_budget=0.2 / 60, batch_size=8, average="ema:0.5")
    probed = []
    train_for(model, config, synthetic_images(), lambda logits, x, y, t: F.cross_entropy(logits, y), probe=probed.append)
    assert len(probed) == 1 and probed[0] is not model
    assert not torch.equal(probed[0][1].weight, model[1].weight)  # an average of the steps, not the last weights


def test_markdown_table_lines():
    from mondeq.benchmarks import markdown_table

    assert markdown_table(["a", "b"], [[1, "x"], [2.5, ""]]) == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 |  |"]
    assert markdown_table(["only"], []) == ["| only |", "|---|"]
