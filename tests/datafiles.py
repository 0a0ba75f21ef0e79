"""Small data files in the real distribution formats, for loader and CLI tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from mondeq.data import ImageDataset, load_dataset, write_synthetic_mnist


def write_mnist_like(folder: Path, train: int = 64, test: int = 32, seed: int = 0) -> Path:
    """IDX .gz files as distributed for MNIST / Fashion-MNIST; images correlate with labels."""
    return write_synthetic_mnist(folder, train, test, seed)


def fashion_like(folder: Path, train: int, test: int) -> tuple[ImageDataset, ImageDataset, Path]:
    """The train and test sets of Fashion-MNIST-like files of ``train`` and ``test`` images written to
    ``folder``, and the folder."""
    folder = write_mnist_like(folder, train=train, test=test)
    return load_dataset("fashion-mnist", "train", folder), load_dataset("fashion-mnist", "test", folder), folder


def write_cifar_like(folder: Path, per_batch: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        content = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(per_batch)],
        }
        (batches / name).write_bytes(pickle.dumps(content, protocol=2))
    return folder


def write_svhn_like(folder: Path, n: int = 12, seed: int = 0) -> Path:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        X = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 10 stands for the digit 0
        savemat(folder / f"{split}_32x32.mat", {"X": X, "y": y})
    return folder
