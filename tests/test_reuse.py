"""Fixed-point reuse and the cheaper gradients: a warm start changes the cost, never the answer (dense
float64); the phantom gradient tends to the exact one; every gradient mode trains; resume with reuse."""

from __future__ import annotations

import math

import pytest
import torch

from datafiles import fashion_like
from helpers import OPERATOR_NAMES, dense_equilibrium, make_input, make_operator, run_config
from mondeq import FullyConnected, MonDEQ, get_activation
from mondeq.checkpoint import load_checkpoint
from mondeq.errors import ConfigError
from mondeq.gradients import GRADIENTS, JacobianFree, Phantom, get_gradient
from mondeq.reuse import FixedPointStore
from mondeq.train import Trainer


def solve_twice(op, solver, tol, store_dtype=torch.float64, activation="relu"):
    """Cold solve of x2, then x1 (stored), then a warm solve of x2 from x1's fixed points: (z_cold, z_warm, layer)."""
    layer = MonDEQ(op, solver=solver, activation=activation, tol=tol, max_iter=20000, alpha=0.5 if solver != "fb" else 1e-9)
    if solver == "fb":
        layer.alpha = 0.9 * op.m / op.lipschitz() ** 2
    x1, x2 = make_input(op, seed=1), make_input(op, seed=2)
    store = FixedPointStore(len(x1), op.features, dtype=store_dtype)
    layer.fixed_points = store
    rows = torch.arange(len(x1))
    z_cold = op.flatten(layer(x2))  # no gradient wanted: the store is not used
    cold_iterations = layer.stats.forward.iterations
    with store.select(rows):
        layer(x1.requires_grad_(True))  # keeps x1's fixed points
    with store.select(rows):
        z_warm = op.flatten(layer(x2.requires_grad_(True))).detach()
    return z_cold, z_warm, layer, cold_iterations


@pytest.mark.parametrize("name", OPERATOR_NAMES)
@pytest.mark.parametrize("solver", ["pr", "dr"])
def test_a_warm_start_returns_the_cold_equilibrium(name, solver):
    """Started from another input's fixed point, the solve reaches the same equilibrium (dense reference)."""
    op = make_operator(name).double()
    z_cold, z_warm, layer, _ = solve_twice(op, solver, tol=1e-9)
    reference = dense_equilibrium(op, get_activation("relu"), make_input(op, seed=2))
    assert torch.allclose(z_cold, reference, atol=1e-6), name
    assert torch.allclose(z_warm, reference, atol=1e-6), name
    assert layer.stats.forward.converged


@pytest.mark.parametrize("name", ["fc", "single"])
def test_forward_backward_warm_starts_too(name):
    op = make_operator(name, m=1.0, scale=0.3).double()  # a small L = ||I - W||: forward-backward's step m / L^2
    z_cold, z_warm, _, _ = solve_twice(op, "fb", tol=1e-8)
    assert torch.allclose(z_cold, z_warm, atol=1e-6)


@pytest.mark.parametrize("solver", ["pr", "dr"])
def test_a_solve_started_at_its_own_fixed_point_stops_after_one_step(solver):
    op = make_operator("single").double()
    layer = MonDEQ(op, solver=solver, tol=1e-8, max_iter=1000)
    store = FixedPointStore(3, op.features, dtype=torch.float64)
    layer.fixed_points = store
    x = make_input(op).requires_grad_(True)
    with store.select(torch.arange(3)):
        layer(x).sum().backward()
    cold = layer.stats.forward.iterations, layer.stats.backward.iterations
    with store.select(torch.arange(3)):
        layer(x).sum().backward()
    assert cold[0] > 5 and cold[1] > 5
    assert (layer.stats.forward.iterations, layer.stats.backward.iterations) == (1, 1)


def test_warm_backward_solves_give_the_cold_gradient():
    op = make_operator("multi2").double()
    x = make_input(op)
    grads = []
    for warm in (False, True):
        layer = MonDEQ(op, tol=1e-10, max_iter=2000)
        store = FixedPointStore(3, op.features, dtype=torch.float32)  # rows rounded: only the start changes
        layer.fixed_points = store
        weight = torch.randn(3, op.features, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        for visit in [x + 0.1, x] if warm else [x]:  # warm: the first visit, of another input, fills the store
            inputs = visit.clone().requires_grad_(True)
            op.zero_grad()
            with store.select(torch.arange(3)):
                (op.flatten(layer(inputs)) * weight).sum().backward()
        grads.append([inputs.grad.clone(), *(p.grad.clone() for p in op.parameters())])
    for cold, warm in zip(*grads):
        assert torch.allclose(cold, warm, atol=1e-7)


def test_examples_beyond_the_memory_cap_start_cold():
    store = FixedPointStore(10, 4, max_bytes=3 * 4 * 2 * 2)  # three examples, two directions of bf16
    assert store.capacity == 3 and store.nbytes == 3 * 4 * 2 * 2 + 2 * 3
    op = FullyConnected(5, 4, m=0.5)
    layer = MonDEQ(op, tol=1e-3)
    layer.fixed_points = store
    x = torch.randn(4, 5, requires_grad=True)
    for _ in range(2):
        with store.select(torch.tensor([0, 2, 5, 9])):
            layer(x).sum().backward()
    assert store.visited["forward"].tolist() == [True, False, True] and store.visited["backward"].tolist() == [True, False, True]
    assert "3 of 10 examples (memory cap)" in store.describe()


def test_the_store_is_only_used_inside_select_and_with_gradients():
    op = FullyConnected(5, 4, m=0.5)
    layer = MonDEQ(op, tol=1e-3)
    layer.fixed_points = store = FixedPointStore(2, 4)
    x = torch.randn(2, 5, requires_grad=True)
    layer(x)  # no selection
    with torch.no_grad(), store.select(torch.arange(2)):
        layer(x)  # evaluation
    assert not store.visited["forward"].any()
    with store.select(torch.arange(2)):
        layer(x)
    assert store.visited["forward"].all() and store.active() is None


# -- the gradients ------------------------------------------------------------------------------
def gradients(layer, x, weight):
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    (layer.linear.flatten(layer(x)) * weight).sum().backward()
    return [x.grad, *(p.grad for p in layer.linear.parameters())]


def test_the_phantom_gradient_tends_to_the_exact_one_as_k_grows():
    """With a damping below 2 min(m, 1) / (1 + ||W||)^2 the truncated Neumann series converges."""
    op = make_operator("fc", m=0.5).double()
    x = make_input(op)
    weight = torch.randn(3, op.features, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    exact = gradients(MonDEQ(op, tol=1e-12, max_iter=5000), x, weight)
    norm_w = torch.linalg.matrix_norm(op.to_dense(), ord=2).item()
    damping = 2 * min(op.m, 1) / (1 + norm_w) ** 2 * 0.99
    errors = []
    for steps in (1, 10, 100, 1000, 4000):
        layer = MonDEQ(op, tol=1e-12, max_iter=5000, gradient=Phantom(steps, damping))
        approx = gradients(layer, x, weight)
        errors.append(max(float((a - e).norm() / e.norm()) for a, e in zip(approx, exact)))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4 and errors[0] > 0.1, errors


def test_jacobian_free_is_one_undamped_step():
    op = make_operator("single").double()
    x = make_input(op)
    weight = torch.randn(3, op.features, dtype=torch.float64)
    free = gradients(MonDEQ(op, tol=1e-12, max_iter=5000, gradient="jacobian-free"), x, weight)
    one = gradients(MonDEQ(op, tol=1e-12, max_iter=5000, gradient=Phantom(1, 1.0)), x, weight)
    for a, b in zip(free, one):
        assert torch.equal(a, b)
    layer = MonDEQ(op, gradient="jacobian-free")
    layer(x.requires_grad_(True)).sum().backward()
    assert layer.stats.backward is None  # no backward solve


def test_gradient_options_are_checked():
    assert get_gradient("phantom", steps=3, damping=0.8) == Phantom(3, 0.8)
    assert isinstance(get_gradient("jacobian-free"), JacobianFree) and set(GRADIENTS) == {"implicit", "phantom", "jacobian-free"}
    for bad in ({"steps": 0}, {"damping": 0.0}, {"damping": 1.5}, {"steps": 2.5}):
        with pytest.raises(ValueError, match="phantom"):
            Phantom(**bad)
    with pytest.raises(ValueError, match="unknown gradient 'adjoint'"):
        MonDEQ(FullyConnected(3, 4), gradient="adjoint")


# -- training ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fashion_like(tmp_path_factory.mktemp("fashion"), train=96, test=32)[:2]


def config(out, model="single-conv", model_options=None, **kw):
    options = {"tol": 1e-3, **(model_options or {})}
    return run_config(out, model, model_options=options, **{"epochs": 3, "test_batch_size": 32, "lr": 5e-3, **kw})


@pytest.mark.parametrize(
    "gradient", [{"gradient": "implicit"}, {"gradient": "phantom", "phantom_steps": 3}, {"gradient": "jacobian-free"}]
)
def test_each_gradient_mode_trains(tmp_path, data, gradient):
    history = Trainer(config(tmp_path / "run", epochs=4, model_options=gradient), *data, progress=False).fit()
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"], history
    assert history[-1]["test_accuracy"] > 0.3
    assert (history[-1]["backward_iterations"] > 0) == (gradient["gradient"] == "implicit")


def test_reuse_cuts_the_iterations_from_the_second_epoch(tmp_path, data):
    """On this toy set a visit comes 6 updates after the last one, which move the equilibria a few
    percent: the saving is smaller than on a real data set's 469 (docs/benchmarks.md)."""
    cold = Trainer(config(tmp_path / "cold", lr=1e-3), *data, progress=False).fit()
    warm = Trainer(config(tmp_path / "warm", lr=1e-3, reuse="both"), *data, progress=False).fit()
    assert warm[0]["forward_iterations"] == cold[0]["forward_iterations"]  # nothing stored yet
    for later in (1, 2):
        assert warm[later]["forward_iterations"] < 0.85 * cold[later]["forward_iterations"], (warm, cold)
        assert warm[later]["backward_iterations"] < cold[later]["backward_iterations"], (warm, cold)


@pytest.mark.parametrize("reuse", ["forward", "both"])
def test_resume_with_reuse_is_bit_identical(tmp_path, data, reuse):
    """The store is saved with every checkpoint (an attachment), so a resumed run matches bit for bit."""
    full = Trainer(config(tmp_path / "full", reuse=reuse), *data, progress=False)
    expected = full.fit()
    first = Trainer(config(tmp_path / "split", reuse=reuse), *data, progress=False)
    first.fit(stop_after_batches=9)  # mid-epoch 2
    assert "fixed-points" in load_checkpoint(tmp_path / "split")[0]["attachments"]
    resumed = Trainer.resume_run(tmp_path / "split", train_set=data[0], test_set=data[1], progress=False)
    history = resumed.fit()
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    timing = {"forward_seconds", "backward_seconds", "epoch_seconds", "elapsed_seconds"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in history] == [
        {k: v for k, v in r.items() if k not in timing} for r in expected
    ]


def test_only_the_checkpoints_of_an_interruption_hold_the_store(tmp_path, data):
    run = tmp_path / "run"
    Trainer(config(run, reuse="forward", epochs=1), *data, progress=False).fit()
    meta = load_checkpoint(run)[0]
    assert "attachments" not in meta and not list(run.glob("*fixed-points*"))  # an epoch's end: gigabytes not written


def test_reuse_both_needs_the_implicit_gradient(tmp_path, data):
    with pytest.raises(ConfigError, match="solves no backward problem: use --reuse forward"):
        Trainer(config(tmp_path / "run", reuse="both", model_options={"gradient": "jacobian-free"}), *data, progress=False)


def test_resume_without_the_stored_fixed_points_continues_cold(tmp_path, data, capsys):
    """A crash may lose the unflushed attachment: the run goes on from cold starts, to tolerance."""
    run = tmp_path / "run"
    Trainer(config(run, reuse="both"), *data, progress=False).fit(stop_after_batches=9)
    meta = load_checkpoint(run)[0]
    (run / meta["attachments"]["fixed-points"]).unlink()
    resumed = Trainer.resume_run(run, train_set=data[0], test_set=data[1], progress=False)
    assert not resumed.fixed_points.visited["forward"].any()
    assert "every example starts cold once" in capsys.readouterr().err
    history = resumed.fit()
    assert len(history) == 3 and all(math.isfinite(r["train_loss"]) for r in history)
