"""Monotone layers on non-square images: Fashion-MNIST cropped to 28x20, a two-tier operator.

The built-in operators take any image shape: ``MultiConv(1, (8, 16), (28, 20))`` holds a
28x20 tier and a 14x10 tier (a multi-tier operator needs even sides on every tier but the
last and names the size it cannot halve), with its resolvent exact in the Fourier domain.
The readout pools the coarsest tier. Fashion-MNIST comes from Debian's package or
``--data-dir``; without it (and with ``--tiny``) random images stand in.

    python examples/nonsquare_images.py [--tiny] [--epochs 1] [--data-dir DIR]
"""

import argparse
import time

import torch
from torch import nn

from mondeq import MonDEQ, MultiConv
from mondeq.data import DATASETS, Batches, ImageDataset, load_dataset
from mondeq.errors import DataError

HEIGHT, WIDTH = 28, 20


class NonSquareModel(nn.Module):
    """(N, 1, 28, 20) images -> equilibrium tiers (8, 28, 20) and (16, 14, 10) -> logits from the coarse tier."""

    def __init__(self, channels: tuple[int, int] = (8, 16), classes: int = 10) -> None:
        super().__init__()
        self.equilibrium = MonDEQ(MultiConv(1, channels, (HEIGHT, WIDTH), m=1.0), solver="pr", tol=1e-2, max_iter=50)
        self.head = nn.Linear(channels[1] * (HEIGHT // 4) * (WIDTH // 4), classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fine, coarse = self.equilibrium(images)
        return self.head(nn.functional.avg_pool2d(coarse, 2).flatten(1))


def crop(x: torch.Tensor) -> torch.Tensor:
    """The middle 20 columns of 28x28 images."""
    left = (x.shape[-1] - WIDTH) // 2
    return x[..., left : left + WIDTH]


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
    parser.add_argument("--tiny", action="store_true", help="a few steps on random images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = data(args.tiny, args.data_dir)
    model = NonSquareModel(channels=(2, 4) if args.tiny else (8, 16))
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters, tiers {model.equilibrium.linear.sizes}")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for step, (x, y) in enumerate(Batches(train, 16 if args.tiny else 128, shuffle=True, epoch=epoch)):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(crop(x)), y)
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                stats = model.equilibrium.stats
                print(f"epoch {epoch + 1} step {step}: loss {loss.item():.3f}, {stats.forward.iterations} forward iterations")
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in Batches(test, 500):
            correct += (model(crop(x)).argmax(1) == y).sum().item()
    print(f"test accuracy {correct / len(test):.4f} after {args.epochs} epoch(s), {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
