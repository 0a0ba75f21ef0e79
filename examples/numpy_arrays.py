"""Train the paper's single-convolution classifier on your own images held in NumPy arrays.

Any ``uint8`` arrays of shape (N, H, W) or (N, C, H, W) with integer labels work; here they are
synthetic (a bright bar whose height encodes the label). mondeq's batches, normalisation and
model preset do the rest:

    python examples/numpy_arrays.py [--tiny]
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from mondeq.data import Batches, DatasetInfo, ImageDataset
from mondeq.models import MonDEQClassifier, preset_config


def synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels):
        image[2 + 2 * label : 4 + 2 * label, 4:24] = 250
    return images, labels


def as_dataset(images: np.ndarray, labels: np.ndarray, info: DatasetInfo) -> ImageDataset:
    images = images[:, None] if images.ndim == 3 else images  # (N, C, H, W)
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), info)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = 64 if args.tiny else 2000
    classes = [str(k) for k in range(10)]
    train_images, train_labels = synthetic(n, rng)
    mean, std = float(train_images.mean() / 255), float(train_images.std() / 255)
    info = DatasetInfo("bars", channels=1, image_size=28, classes=classes, mean=(mean,), std=(std,))
    train, test = as_dataset(train_images, train_labels, info), as_dataset(*synthetic(n // 4, rng), info)

    torch.manual_seed(0)
    model = MonDEQClassifier(preset_config("single-conv", "bars", 1, 28, 10, channels=[4 if args.tiny else 16]))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(1 if args.tiny else 2):
        model.train()
        for x, y in Batches(train, 32, shuffle=True, epoch=epoch):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in Batches(test, 64))
        print(f"epoch {epoch + 1}: test accuracy {correct / len(test):.3f}")


if __name__ == "__main__":
    main()
