"""OperatorFromMaps(A, B): operators from the user's own linear maps, against dense float64 algebra.

The shared dense tests (test_operators, test_solvers, test_gradients) also run on two of these
operators (helpers.OPERATOR_NAMES); here: W from the maps' explicit matrices (independent of
the vector-Jacobian products), more kinds of maps, the Krylov resolvent, the probes and errors.
"""

import pytest
import torch
from torch import nn

from helpers import dense_equilibrium
from mondeq import KrylovStats, MonDEQ, OperatorFromMaps, get_activation
from mondeq.operators import gmres


def matrix_of(fn, shape) -> torch.Tensor:
    """The matrix of a linear map of ``shape``-shaped samples: column j is fn(e_j)."""
    n = int(torch.tensor(shape).prod())
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        return fn(eye).reshape(n, -1).T


class GraphPropagation(nn.Module):
    """Sparse adjacency times node features times a weight: (N, nodes, f) -> (N, nodes, f_out)."""

    def __init__(self, adjacency: torch.Tensor, features: int, out_features: int) -> None:
        super().__init__()
        self.register_buffer("adjacency", adjacency)  # follows .double() / .to(device)
        self.weight = nn.Parameter(torch.randn(features, out_features) / features**0.5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n, nodes, f = z.shape
        mixed = torch.sparse.mm(self.adjacency, z.transpose(0, 1).reshape(nodes, n * f))
        return mixed.reshape(nodes, n, f).transpose(0, 1) @ self.weight


def ring_graph(nodes: int) -> torch.Tensor:
    index = torch.arange(nodes)
    rows = torch.cat([index, index])
    cols = torch.cat([(index + 1) % nodes, (index + 3) % nodes])
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), torch.ones(2 * nodes), (nodes, nodes), check_invariants=True
    ).coalesce()


def build(kind: str, m: float = 0.5, seed: int = 0) -> tuple[OperatorFromMaps, tuple[int, ...]]:
    """An operator of ``kind`` in float64 with random parameters, and the shape of one input sample."""
    torch.manual_seed(seed)
    if kind == "conv2d-nonsquare":  # a 5 x 3 hidden image, reflect padding
        op = OperatorFromMaps(
            A=nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False),
            B=nn.Conv2d(2, 2, 3, padding=1, bias=False),
            injection=nn.Conv2d(1, 2, 3, padding=1),
            hidden_shape=(2, 5, 3),
            m=m,
        )
        shape = (1, 5, 3)
    elif kind == "conv3d":
        op = OperatorFromMaps(
            A=nn.Conv3d(2, 2, 3, padding=1, padding_mode="circular", bias=False),
            B=nn.Conv3d(2, 2, 3, padding=1, bias=False),
            injection=nn.Conv3d(1, 2, 1),
            hidden_shape=(2, 3, 2, 3),
            m=m,
        )
        shape = (1, 3, 2, 3)
    elif kind == "graph":
        adjacency = ring_graph(6)
        op = OperatorFromMaps(
            A=GraphPropagation(adjacency, 2, 3),
            B=GraphPropagation(adjacency, 2, 2),
            injection=nn.Linear(4, 2),
            hidden_shape=(6, 2),
            m=m,
        )
        shape = (6, 4)
    elif kind == "callable":  # plain functions as A and B (fixed), transposes supplied
        a, b = torch.randn(4, 8, dtype=torch.float64), torch.randn(8, 8, dtype=torch.float64)
        op = OperatorFromMaps(
            A=lambda z: z @ a.T,
            B=lambda z: z @ b.T,
            injection=nn.Linear(3, 8, dtype=torch.float64),  # the maps' dtype from the start
            hidden_shape=(8,),
            m=m,
            A_T=lambda v: v @ a,
            B_T=lambda v: v @ b,
        )
        shape = (3,)
    else:
        raise ValueError(kind)
    op.double()
    with torch.no_grad():
        for p in op.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return op, shape


KINDS = ["conv2d-nonsquare", "conv3d", "graph", "callable"]


def dense_W(op: OperatorFromMaps) -> torch.Tensor:
    A = matrix_of(op.A, op.hidden_shape)
    B = matrix_of(op.B, op.hidden_shape)
    return (1 - op.m) * torch.eye(op.features, dtype=torch.float64) - A.T @ A + B - B.T


def rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("kind", KINDS)
def test_W_and_its_transpose_match_the_maps_matrices(kind):
    op, _ = build(kind)
    W = dense_W(op)
    sym = torch.eye(op.features, dtype=W.dtype) - (W + W.T) / 2
    assert torch.linalg.eigvalsh(sym).min().item() >= op.m - 1e-9
    z = torch.randn(3, op.features, dtype=torch.float64)
    assert rel(op.multiply(z), z @ W.T) < 1e-12
    assert rel(op.multiply_transpose(z), z @ W) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [0.3, 2.0])
def test_krylov_resolvent_matches_dense_and_reports_its_work(kind, alpha):
    op, _ = build(kind)
    M = (1 + alpha) * torch.eye(op.features, dtype=torch.float64) - alpha * dense_W(op)
    y = torch.randn(4, op.features, dtype=torch.float64)
    resolvent = op.resolvent(alpha)
    assert rel(resolvent.solve(y), torch.linalg.solve(M, y.T).T) < 1e-10
    assert rel(resolvent.T.solve(y), torch.linalg.solve(M.T, y.T).T) < 1e-10
    stats = resolvent.inner
    assert isinstance(stats, KrylovStats) and resolvent.T.inner is stats
    assert stats.applications == 2 and stats.iterations > 0 and stats.residual < 1e-11


@pytest.mark.parametrize("kind", KINDS)
def test_equilibrium_from_every_splitting_matches_dense(kind):
    op, shape = build(kind)
    x = torch.randn(3, *shape, dtype=torch.float64)
    act = get_activation("relu")
    reference = dense_equilibrium(op, act, x)
    for solver in ("fb", "pr", "dr"):
        alpha = 0.9 * op.m / op.lipschitz() ** 2 if solver == "fb" else 0.7
        layer = MonDEQ(op, solver=solver, alpha=alpha, tol=1e-11, max_iter=5000, anderson=5 if solver == "fb" else 0)
        with torch.no_grad():
            z = op.flatten(layer(x))
        assert layer.stats.forward.converged, solver
        assert rel(z, reference) < 1e-8, solver
        inner = layer.stats.forward.inner_iterations
        assert (inner is None) == (solver == "fb") and (inner is None or inner > 0)


@pytest.mark.parametrize("kind", ["conv2d-nonsquare", "graph"])
def test_gradients_match_dense_implicit_function_theorem(kind):
    """d<w, z*>/d(x, every parameter) from the layer against the dense IFT gradient."""
    op, shape = build(kind)
    x = torch.randn(2, *shape, dtype=torch.float64)
    act = get_activation("softplus")
    weight = torch.randn(2, op.features, dtype=torch.float64)
    z = dense_equilibrium(op, act, x)
    W = dense_W(op)
    with torch.no_grad():
        D = act.derivative(z @ W.T + op.inject(x))
        J = torch.eye(op.features, dtype=W.dtype)[None] - W.T[None] * D[:, None, :]
        w = D * torch.linalg.solve(J, weight[..., None])[..., 0]
    xr = x.clone().requires_grad_(True)
    expected = torch.autograd.grad((w * (op.multiply(z) + op.inject(xr))).sum(), [xr, *op.parameters()])
    layer = MonDEQ(op, activation="softplus", solver="pr", alpha=0.8, tol=1e-12, max_iter=2000)
    xr = x.clone().requires_grad_(True)
    got = torch.autograd.grad((weight * op.flatten(layer(xr))).sum(), [xr, *op.parameters()])
    for name, g, e in zip(["x"] + [n for n, _ in op.named_parameters()], got, expected):
        assert rel(g, e) < 1e-6, name
    assert layer.stats.backward.converged and layer.stats.backward.inner_iterations > 0


def test_outer_solve_converges_although_each_inner_solve_is_loose():
    """Inner GMRES stopping after a 2x reduction of its warm start's residual (and no absolute
    target) still lets Peaceman-Rachford reach 1e-10: the warm starts follow the outer iterates."""
    op, shape = build("conv2d-nonsquare")
    x = torch.randn(3, *shape, dtype=torch.float64)
    reference = dense_equilibrium(op, get_activation("relu"), x)
    layer = MonDEQ(op, solver="pr", alpha=0.7, tol=1e-10, max_iter=500)
    frozen = op.frozen(layer.alpha)
    original = frozen.resolvent.inner.reset

    def loose(tol=None, reduction=None):
        original(tol=0.0, reduction=0.5)

    frozen.resolvent.inner.reset = loose
    with torch.no_grad():
        z = op.flatten(layer(x))
    record = layer.stats.forward
    assert record.converged and record.residual <= 1e-10
    assert rel(z, reference) < 1e-8
    assert record.inner_residual > 1e-6  # the inner solves really were loose
    assert record.inner_iterations < 10 * record.iterations


def test_gmres_solves_batched_systems_per_row():
    generator = torch.Generator().manual_seed(0)
    M = 3 * torch.eye(12, dtype=torch.float64) + torch.randn(12, 12, generator=generator, dtype=torch.float64)
    M = M @ M.T / 12 + torch.eye(12, dtype=torch.float64) + (M - M.T) / 2  # symmetric part >= I
    b = torch.randn(5, 12, generator=generator, dtype=torch.float64)
    b[2] *= 1e-8  # a row of tiny scale converges to its own relative tolerance
    x, iterations, residual = gmres(lambda v: v @ M.T, b, torch.zeros_like(b), tol=1e-12, restart=5, max_iter=200)
    assert residual < 1e-11 and iterations > 5  # needed restarts
    assert rel(x[2], torch.linalg.solve(M, b[2])) < 1e-10


def test_nonlinear_or_biased_maps_are_rejected_by_name():
    with pytest.raises(ValueError, match=r"A \(Sequential\) is not linear"):
        OperatorFromMaps(
            nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU()), nn.Linear(4, 4, bias=False), nn.Linear(2, 4), (4,)
        )
    with pytest.raises(ValueError, match=r"B \(Linear\) is not linear"):
        OperatorFromMaps(nn.Linear(4, 3, bias=False), nn.Linear(4, 4), nn.Linear(2, 4), (4,))


def test_shape_mismatches_are_named():
    with pytest.raises(ValueError, match=r"B \(Linear\) must map hidden states \(2, 4\) to the same shape, got \(2, 5\)"):
        OperatorFromMaps(nn.Linear(4, 3, bias=False), nn.Linear(4, 5, bias=False), nn.Linear(2, 4), (4,))
    with pytest.raises(ValueError, match=r"A \(Conv1d\) cannot take hidden states of shape \(2, 4\)"):
        OperatorFromMaps(nn.Conv1d(3, 3, 3, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(2, 4), (4,))
    op = OperatorFromMaps(nn.Linear(4, 3, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(2, 5), (4,))
    with pytest.raises(ValueError, match=r"injection \(Linear\) maps inputs \(3, 2\) to \(3, 5\), expected \(batch, 4\)"):
        MonDEQ(op)(torch.randn(3, 2))
    with pytest.raises(ValueError, match="A_T is not the transpose"):
        OperatorFromMaps(
            nn.Linear(4, 3, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(2, 4), (4,), A_T=lambda v: v[:, :1].repeat(1, 4)
        )
    with pytest.raises(TypeError, match="hidden_shape must be a tuple"):
        OperatorFromMaps(nn.Linear(4, 3, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(2, 4), 4)


def test_inside_a_model_trained_by_a_plain_loop():
    """conv stem -> monotone layer on a 1-D signal -> head, trained by an ordinary PyTorch loop."""
    torch.manual_seed(0)
    layer = MonDEQ(
        OperatorFromMaps(
            A=nn.Conv1d(4, 4, 3, padding=1, bias=False),
            B=nn.Conv1d(4, 4, 3, padding=1, bias=False),
            injection=nn.Conv1d(4, 4, 1),
            hidden_shape=(4, 16),
            m=1.0,
        ),
        solver="pr",
        tol=1e-4,
    )
    model = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), layer, nn.Flatten(), nn.Linear(64, 2))
    x = torch.randn(32, 1, 16)
    y = (x.mean(dim=(1, 2)) > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert layer.stats.backward.converged and layer.stats.forward.inner_iterations > 0
