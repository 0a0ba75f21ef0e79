"""A monotone layer built from your own linear maps: Fashion-MNIST read row by row as a sequence.

Each image is a 28-step sequence of 28-pixel rows. With ``--operator monotone`` (the default)
the equilibrium layer is ``OperatorFromMaps(A, B, injection)`` with 1-D convolutions along the sequence
as A and B: whatever their weights, W = (1 - m) I - A^T A + B - B^T is monotone, so the
equilibrium exists, is unique and Peaceman-Rachford finds it (its resolvent by GMRES,
warm-started). With ``--operator fft`` it is the built-in ``SingleConv`` on 1-D signals: A and
B circular convolutions with normalised kernels (g K / ||K||), the resolvent exact in the
Fourier domain.
A linear head reads the pooled equilibrium. Fashion-MNIST comes from Debian's package or
``--data-dir``; without it (and with ``--tiny``) random images stand in.

    python examples/own_monotone_layer.py [--operator monotone|fft] [--tiny] [--epochs 1] [--data-dir DIR]
"""

import argparse
import time

import torch
from torch import nn

from mondeq import MonDEQ, OperatorFromMaps, SingleConv
from mondeq.data import DATASETS, Batches, ImageDataset, load_dataset
from mondeq.errors import DataError


class SequenceModel(nn.Module):
    """(N, 1, 28, 28) images -> 28 steps of 28 features -> monotone equilibrium (channels, 28) -> logits."""

    def __init__(self, kind: str = "monotone", channels: int = 32, steps: int = 28, features: int = 28, classes: int = 10):
        super().__init__()
        if kind == "monotone":  # your own maps: any linear modules
            operator = OperatorFromMaps(
                A=nn.Conv1d(channels, channels, 3, padding=1, bias=False),
                B=nn.Conv1d(channels, channels, 3, padding=1, bias=False),
                injection=nn.Conv1d(features, channels, 3, padding=1),
                hidden_shape=(channels, steps),
                m=1.0,
            )
        elif kind == "fft":  # the built-in operator on sequences of length `steps`: circular convolutions, FFT resolvent
            operator = SingleConv(features, channels, (steps,), m=1.0)
        else:
            raise ValueError(f"kind must be 'monotone' or 'fft', got {kind!r}")
        self.equilibrium = MonDEQ(operator, solver="pr", tol=1e-2, max_iter=50)
        self.head = nn.Linear(channels * (steps // 4), classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        sequence = images[:, 0].transpose(1, 2)  # (N, features = pixel columns, steps = rows)
        z = self.equilibrium(sequence)  # (N, channels, steps)
        return self.head(nn.functional.avg_pool1d(z, 4).flatten(1))


def data(tiny: bool, data_dir: str | None) -> tuple[ImageDataset, ImageDataset]:
    if not tiny:
        try:
            return load_dataset("fashion-mnist", "train", data_dir), load_dataset("fashion-mnist", "test", data_dir)
        except DataError as error:
            print(f"no Fashion-MNIST ({error}); random images instead")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (64, 1, 28, 28), generator=generator, dtype=torch.uint8)
    fake = ImageDataset(images, torch.randint(0, 10, (64,), generator=generator), DATASETS["fashion-mnist"])
    return fake, fake


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--operator", choices=["monotone", "fft"], default="monotone", help="OperatorFromMaps(A, B) or SingleConv"
    )
    parser.add_argument("--tiny", action="store_true", help="a few steps on random images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = data(args.tiny, args.data_dir)
    model = SequenceModel(args.operator, channels=4 if args.tiny else 32)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for step, (x, y) in enumerate(Batches(train, 16 if args.tiny else 128, shuffle=True, epoch=epoch)):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                stats = model.equilibrium.stats
                inner = f", {stats.forward.inner_iterations} GMRES iterations" if args.operator == "monotone" else ""
                print(
                    f"epoch {epoch + 1} step {step}: loss {loss.item():.3f}, {stats.forward.iterations} forward / "
                    f"{stats.backward.iterations} backward iterations{inner}"
                )
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in Batches(test, 500):
            correct += (model(x).argmax(1) == y).sum().item()
    print(f"test accuracy {correct / len(test):.4f} after {args.epochs} epoch(s), {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
