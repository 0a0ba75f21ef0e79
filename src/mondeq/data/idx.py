"""MNIST and Fashion-MNIST: IDX files of unsigned bytes, as distributed (optionally gzipped)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import DataError
from .dataset import DatasetInfo
from .files import read_bytes
from .registry import DataReader

__all__ = ["FashionMNIST", "MNIST", "read_idx", "write_idx", "write_synthetic_mnist"]

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGITS = [str(i) for i in range(10)]


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (MNIST format), optionally gzipped."""
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file: bad magic number {data[:4].hex() or '(empty)'}")
    if data[2] != 0x08:
        raise DataError(f"{path}: IDX data type 0x{data[2]:02x} is not unsigned bytes (0x08)")
    ndim = data[3]
    if ndim != expected_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: header needs {header} bytes, file has {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{path} is truncated or padded: {len(data)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``uint8`` ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``); inverse of :func:`read_idx`."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_synthetic_mnist(folder: Path, train: int = 64, test: int = 32, seed: int = 0) -> Path:
    """MNIST-format files of synthetic 28x28 images whose label is drawn as a bright bar (for demos and tests)."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 250
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def _idx_names(prefix: str, kind: str, ndim: int) -> list[str]:
    """The names MNIST-format files go by: ``train-images-idx3-ubyte`` as distributed and
    ``train-images.idx3-ubyte`` as widely shared copies name them, gzipped or raw."""
    stems = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return [stem + suffix for stem in stems for suffix in (".gz", "")]


class IdxReader(DataReader):
    """A data set of 28x28 grey images in IDX files (``train-*`` and ``t10k-*``)."""

    def read(self, split: str, find: Callable[..., Path]) -> tuple[np.ndarray, np.ndarray]:
        prefix = "train" if split == "train" else "t10k"
        image_file, label_file = find(_idx_names(prefix, "images", 3)), find(_idx_names(prefix, "labels", 1))
        images = read_idx(image_file, 3)[:, None]
        labels = read_idx(label_file, 1).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{image_file} has {images.shape[0]} images but {label_file} has {labels.shape[0]} labels")
        return images, labels


class FashionMNIST(IdxReader):
    name = "fashion-mnist"
    info = DatasetInfo("fashion-mnist", 1, 28, FASHION_CLASSES, (0.2860,), (0.3530,))
    folders = ("FashionMNIST/raw",)
    #: Where Debian's ``dataset-fashion-mnist`` package installs the files.
    system_dirs: ClassVar[tuple[Path, ...]] = (Path("/usr/share/datasets/fashion-mnist"),)


class MNIST(IdxReader):
    name = "mnist"
    info = DatasetInfo("mnist", 1, 28, DIGITS, (0.1307,), (0.3081,))
    folders = ("MNIST/raw",)
