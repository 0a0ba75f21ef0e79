"""A monotone equilibrium layer inside your own PyTorch model and training loop.

A conv stem, a monDEQ layer (its equilibrium exists, is unique and is found by
Peaceman-Rachford splitting; gradients by implicit differentiation), then a linear head,
trained with plain PyTorch on random data shaped like MNIST:

    python examples/own_training_loop.py [--tiny]
"""

import argparse

import torch
from torch import nn

from mondeq import MonDEQ, SingleConv


class Model(nn.Module):
    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1)  # 28x28 -> 14x14
        self.equilibrium = MonDEQ(SingleConv(8, channels, 14, m=1.0), solver="pr", tol=1e-3, max_iter=50)
        self.head = nn.Linear(channels * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.equilibrium(torch.relu(self.stem(x)))  # (N, channels, 14, 14)
        return self.head(nn.functional.avg_pool2d(z, 2).flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a few steps on a small batch")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(16 if args.tiny else 256, 1, 28, 28), torch.randint(0, 10, (16 if args.tiny else 256,))
    model = Model(channels=4 if args.tiny else 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(3 if args.tiny else 50):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        stats = model.equilibrium.stats
        iterations = f"{stats.forward.iterations} forward / {stats.backward.iterations} backward iterations"
        print(f"step {step}: loss {loss.item():.3f}, {iterations}")


if __name__ == "__main__":
    main()
