"""A monotone equilibrium on a graph: node classification with a sparse propagation as A and B.

A synthetic graph of four communities (a stochastic block model) whose node features are
noisy community labels. The hidden state holds ``hidden`` features per node; A and B are
graph propagations z -> Â z Θ with the normalised adjacency Â (sparse) and a weight Θ, so

    W = (1 - m) I - AᵀA + B - Bᵀ

is monotone for every Θ: the equilibrium z* = relu(W z* + U x + b) exists, is unique and
mixes information along paths of any length, with no depth to choose. The injection U x + b is a
graph propagation too (with a bias). ``OperatorFromMaps`` finds the transposes of A and B by autograd and
applies the resolvent by GMRES. Trained on a fifth of the nodes;
a logistic regression on the node features alone is the baseline.

    python examples/graph_equilibrium.py [--tiny]
"""

import argparse

import torch
from torch import nn

from mondeq import MonDEQ, OperatorFromMaps


class GraphPropagation(nn.Module):
    """z -> Â z Θ (+ b) for node states z of shape (N, nodes, features_in): without a bias, a linear map of z."""

    def __init__(self, adjacency: torch.Tensor, features_in: int, features_out: int, bias: bool = False) -> None:
        super().__init__()
        self.register_buffer("adjacency", adjacency)
        self.weight = nn.Parameter(torch.randn(features_in, features_out) / features_in**0.5)
        self.bias = nn.Parameter(torch.zeros(features_out)) if bias else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n, nodes, f = z.shape
        mixed = torch.sparse.mm(self.adjacency, z.transpose(0, 1).reshape(nodes, n * f))
        out = mixed.reshape(nodes, n, f).transpose(0, 1) @ self.weight
        return out if self.bias is None else out + self.bias


def block_model(nodes: int, classes: int, features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised sparse adjacency D^-1/2 (A + I) D^-1/2, node features (nodes, features), labels (nodes,)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(nodes) % classes
    same = labels[:, None] == labels[None, :]
    probability = torch.where(same, 8.0 / nodes * classes, 1.0 / nodes)  # ~8 edges inside, ~1 across
    upper = torch.triu(torch.rand(nodes, nodes, generator=generator) < probability, diagonal=1)
    dense = (upper | upper.T).float() + torch.eye(nodes)
    scale = dense.sum(1).rsqrt()
    adjacency = (scale[:, None] * dense * scale[None, :]).to_sparse().coalesce()
    means = torch.randn(classes, features, generator=generator)
    x = means[labels] + 2.0 * torch.randn(nodes, features, generator=generator)  # noisy: features alone are weak
    return adjacency, x, labels


class GraphEquilibrium(nn.Module):
    """Node features (1, nodes, features) -> equilibrium node states (1, nodes, hidden) -> class logits per node."""

    def __init__(self, adjacency: torch.Tensor, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        nodes = adjacency.shape[0]
        operator = OperatorFromMaps(
            A=GraphPropagation(adjacency, hidden, hidden),
            B=GraphPropagation(adjacency, hidden, hidden),
            injection=GraphPropagation(adjacency, features, hidden, bias=True),
            hidden_shape=(nodes, hidden),
            m=0.5,
        )
        self.equilibrium = MonDEQ(operator, solver="pr", tol=1e-3, max_iter=100)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.equilibrium(x))[0]


def train(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, known: torch.Tensor, steps: int) -> float:
    """Full-graph Adam steps on the known nodes' labels; accuracy on the others."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x)[known], labels[known])
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (model(x)[~known].argmax(1) == labels[~known]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a small graph, a few steps")
    args = parser.parse_args()
    torch.manual_seed(0)
    nodes, classes, features = (60, 4, 8) if args.tiny else (400, 4, 16)
    steps = 5 if args.tiny else 100
    adjacency, x, labels = block_model(nodes, classes, features)
    known = torch.zeros(nodes, dtype=torch.bool)
    known[torch.randperm(nodes)[: nodes // 5]] = True

    model = GraphEquilibrium(adjacency, features, hidden=16, classes=classes)
    accuracy = train(model, x[None], labels, known, steps)
    stats = model.equilibrium.stats
    print(
        f"graph equilibrium: test accuracy {accuracy:.3f} on {int((~known).sum())} unseen nodes "
        f"({stats.forward.iterations} forward iterations, {stats.forward.inner_iterations} GMRES iterations)"
    )
    baseline = train(nn.Linear(features, classes), x, labels, known, steps)
    print(f"features alone (logistic regression): test accuracy {baseline:.3f}")


if __name__ == "__main__":
    main()
