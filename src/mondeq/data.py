"""Image data sets from their standard distribution files, without torchvision.

Supported: Fashion-MNIST and MNIST (IDX, optionally gzipped), CIFAR-10 (the python pickle
batches, read by a restricted unpickler that only rebuilds numpy arrays) and SVHN (the
``*_32x32.mat`` files, read by scipy). Images are kept as ``uint8`` tensors
``(N, C, H, W)`` and normalised per batch; CIFAR-10 augmentation (random crop with 4-pixel
padding, horizontal flip) is done with torch ops on batches.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DATASETS",
    "DataError",
    "ImageDataset",
    "Batches",
    "default_data_dir",
    "load_dataset",
    "read_idx",
    "write_idx",
    "write_synthetic_mnist",
]

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
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGITS = [str(i) for i in range(10)]


class DataError(RuntimeError):
    """A data file is missing, truncated or not in the expected format."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    image_size: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False  # whether training uses crop + flip augmentation by default

    def normalize(self, images: Tensor) -> Tensor:
        """``uint8`` images ``(N, C, H, W)`` to floats normalised with this data set's mean and std."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 28, FASHION_CLASSES, (0.2860,), (0.3530,)),
    "mnist": DatasetInfo("mnist", 1, 28, DIGITS, (0.1307,), (0.3081,)),
    "cifar10": DatasetInfo("cifar10", 3, 32, CIFAR_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment=True),
    "svhn": DatasetInfo("svhn", 3, 32, DIGITS, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}


def default_data_dir() -> Path:
    """``$MONDEQ_DATA`` or ``~/.cache/mondeq/data``."""
    return Path(os.environ.get("MONDEQ_DATA", Path.home() / ".cache" / "mondeq" / "data"))


@dataclass
class ImageDataset:
    """Images ``(N, C, H, W)`` as ``uint8``, labels ``(N,)`` as ``int64``, and how to normalise them."""

    images: Tensor
    labels: Tensor
    info: DatasetInfo

    def __len__(self) -> int:
        return self.labels.shape[0]

    def normalize(self, images: Tensor) -> Tensor:
        """``uint8`` images to normalised floats."""
        return self.info.normalize(images)

    def subset(self, count: int | None) -> ImageDataset:
        """The first ``count`` examples (all when ``None``)."""
        if count is None or count >= len(self):
            return self
        return ImageDataset(self.images[:count], self.labels[:count], self.info)


def augment_batch(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop with zero padding and random horizontal flip, per image, with torch ops."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(images.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(images.device)  # (n, w)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    cropped = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)


class Batches:
    """Mini-batches of normalised images over one epoch.

    The order depends only on ``(seed, epoch)``, so a resumed run sees the same batches. With
    ``world_size > 1`` each rank takes every ``world_size``-th example of the shuffled order
    (with ``pad``, padded by wrap-around so all ranks run the same number of batches).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.augment = augment
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        n = len(dataset)
        order = torch.randperm(n, generator=self.generator) if shuffle else torch.arange(n)
        if world_size > 1:
            if pad:
                per_rank = -(-n // world_size)
                order = torch.cat([order, order[: per_rank * world_size - n]])
            order = order[rank::world_size]
        self.order = order

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.order), self.batch_size):
            index = self.order[start : start + self.batch_size]
            images = self.dataset.images[index]
            if self.augment:
                images = augment_batch(images, self.generator)
            yield (
                self.dataset.normalize(images.to(self.device)),
                self.dataset.labels[index].to(self.device),
            )


# -- readers -------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(f"cannot read {path}: {error} (the file may be truncated or corrupt)") from error


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (MNIST format), optionally gzipped."""
    data = _read_bytes(path)
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


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays; anything else is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, OSError) as error:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {error} (truncated or not a CIFAR batch)") from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch: missing 'data' or 'labels'")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: CIFAR-10 data has shape {data.shape} for {labels.shape[0]} labels, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32), labels


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        from scipy.io import loadmat

        mat = loadmat(str(path))
    except (ValueError, OSError, TypeError) as error:
        raise DataError(f"cannot read SVHN file {path}: {error} (truncated or not a .mat file)") from error
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} is not an SVHN file: missing 'X' or 'y'")
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)), dtype=np.uint8)
    labels = mat["y"].reshape(-1).astype(np.int64) % 10  # SVHN labels the digit 0 as 10
    if images.shape[1:] != (3, 32, 32) or images.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: SVHN images have shape {images.shape} for {labels.shape[0]} labels")
    return images, labels


def _find(name: str, data_dir: Path, filenames: list[str]) -> Path:
    """The first existing candidate among ``filenames`` in the usual folders."""
    folders = [data_dir, data_dir / name, data_dir / name / "raw", *SYSTEM_DIRS.get(name, [])]
    if name in ("mnist", "fashion-mnist"):
        folders.append(data_dir / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name] / "raw")
    for folder in folders:
        for filename in filenames:
            if (folder / filename).is_file():
                return folder / filename
    looked = ", ".join(str(f) for f in folders)
    raise DataError(f"{name}: none of {filenames} found; looked in {looked}. Pass --data-dir to the folder holding them.")


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None) -> ImageDataset:
    """Load ``split`` (``"train"`` or ``"test"``) of a data set in :data:`DATASETS`."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    info = DATASETS[name]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if name in ("mnist", "fashion-mnist"):
        prefix = "train" if split == "train" else "t10k"
        image_file = _find(name, root, [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte"])
        label_file = _find(name, root, [f"{prefix}-labels-idx1-ubyte.gz", f"{prefix}-labels-idx1-ubyte"])
        images = read_idx(image_file, 3)[:, None]
        labels = read_idx(label_file, 1).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{image_file} has {images.shape[0]} images but {label_file} has {labels.shape[0]} labels")
    elif name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        parts = [_read_cifar_batch(_find(name, root / "cifar-10-batches-py", [f])) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    else:
        images, labels = _read_svhn(_find(name, root, [f"{split}_32x32.mat"]))
    if labels.min() < 0 or labels.max() >= len(info.classes):
        raise DataError(f"{name} {split}: labels outside 0..{len(info.classes) - 1}")
    return ImageDataset(torch.from_numpy(np.array(images)), torch.from_numpy(labels), info)
