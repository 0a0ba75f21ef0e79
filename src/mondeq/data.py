"""Image data sets from their standard distribution files, without torchvision.

Supported: Fashion-MNIST and MNIST (IDX, optionally gzipped), CIFAR-10 (the python pickle
batches, read by a restricted unpickler that only rebuilds numeric numpy arrays no larger than
the file can hold) and SVHN (the ``*_32x32.mat`` files, read by scipy). Images are kept as
``uint8`` tensors ``(N, C, H, W)`` and normalised per batch; CIFAR-10 augmentation (random crop
with 4-pixel padding, horizontal flip) is done with torch ops on batches. :func:`read_image`
reads one image file (PNG, JPEG, TIFF, ... of any bit depth) for prediction.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
import os
import pickle
import pickletools
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import MondeqError

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "DataError",
    "FOLDER",
    "dataset_info",
    "folder_info",
    "ImageDataset",
    "Batches",
    "default_data_dir",
    "load_dataset",
    "read_idx",
    "read_image",
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


class DataError(MondeqError, RuntimeError):
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

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> DatasetInfo:
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

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
        """The first ``count`` examples (all when ``None``); ``count`` must be at least 1."""
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1 (or None for all examples), got {count}")
        if count is None or count >= len(self):
            return self
        return ImageDataset(self.images[:count], self.labels[:count], self.info)


def augment_batch(images: Tensor, generator: torch.Generator, padding: int | None = None) -> Tensor:
    """Random crop with zero padding and random horizontal flip, per image, with torch ops.

    ``padding`` defaults to an eighth of the image side (4 pixels for CIFAR-10's 32, 3 for 28).
    """
    n, _, h, w = images.shape
    padding = max(1, w // 8) if padding is None else padding
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
        self.generator = torch.Generator().manual_seed((seed * 100003 + epoch) % 2**64)  # any seed below 2**64
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

    def indices(self, batch: int) -> Tensor:
        """The data set indices of the examples in batch number ``batch``, ``(batch_size,)`` (fewer in the last)."""
        return self.order[batch * self.batch_size : (batch + 1) * self.batch_size]

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


def _reason(error: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


_NDARRAY = object()  # stands for numpy.ndarray in a pickle: only _ArrayUnpickler._reconstruct takes it


class _DtypeName:
    """A numpy dtype as a pickle names it; numpy's ``dtype.__setstate__`` never sees the pickled state."""

    def __init__(self, name: object, *flags: object) -> None:
        self.name = name
        self.byteorder: object = "="

    def __setstate__(self, state: object) -> None:
        self.byteorder = state[1] if isinstance(state, tuple) and len(state) > 1 else "="


def _plain_dtype(spec: object) -> np.dtype:
    """A numeric, unstructured dtype from a pickled name (``_DtypeName``, ``str`` or ``bytes``)."""
    byteorder: object = "="
    if isinstance(spec, _DtypeName):
        spec, byteorder = spec.name, spec.byteorder
    if isinstance(byteorder, bytes):  # Python 2 pickles read with encoding="bytes"
        byteorder = byteorder.decode("latin1")
    if not isinstance(spec, (str, bytes)) or byteorder not in ("=", "|", "<", ">"):
        raise pickle.UnpicklingError(f"refusing numpy dtype {spec!r}")
    dtype = np.dtype(spec)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"refusing numpy dtype {dtype}")
    return dtype.newbyteorder(byteorder) if byteorder in "<>" else dtype


def _shape(shape: object) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise pickle.UnpicklingError(f"refusing array shape {shape!r}")
    return shape


class _GuardedArray(np.ndarray):
    """An array being unpickled: its state must be plain bytes of exactly the size its shape says."""

    charge: Callable[[int], None]

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("refusing an array state that is not (version, shape, dtype, fortran, data)")
        version, shape, dtype, fortran, raw = state
        shape, dtype = _shape(shape), _plain_dtype(dtype)
        raw = raw.encode("latin1") if isinstance(raw, str) else raw
        nbytes = math.prod(shape) * dtype.itemsize
        if not isinstance(raw, bytes) or len(raw) != nbytes:
            raise pickle.UnpicklingError(f"array data does not match shape {shape} of {dtype}")
        self.charge(nbytes)
        super().__setstate__((version, shape, dtype, bool(fortran), raw))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numeric numpy arrays; anything else is refused.

    The arrays and byte strings built may take at most a few times the pickle's own size in
    all, so a small file cannot ask for a huge allocation.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.data = data
        self.size = len(data)
        self.budget = 4 * len(data) + (1 << 20)

    def load(self) -> object:
        for opcode, arg, _ in pickletools.genops(self.data):  # the C unpickler sizes its memo by the index
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg < self.size:
                raise pickle.UnpicklingError(f"refusing memo index {arg} in a {self.size}-byte file")
        return super().load()

    def find_class(self, module: str, name: str):
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): _DtypeName,
            ("numpy.core.multiarray", "scalar"): self._scalar,
            ("numpy._core.multiarray", "scalar"): self._scalar,
            ("_codecs", "encode"): self._encode,  # how protocol-2 pickles written by Python 3 store bytes
        }
        if (module, name) in allowed:
            return allowed[module, name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def _charge(self, nbytes: int) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            raise pickle.UnpicklingError(f"refusing a {nbytes}-byte array: more than a {self.size}-byte file can hold")

    def _reconstruct(self, subtype: object, shape: object, dtype: object) -> np.ndarray:
        if subtype is not _NDARRAY:
            raise pickle.UnpicklingError(f"refusing to reconstruct {subtype!r}")
        shape, dtype = _shape(shape), _plain_dtype(dtype)
        self._charge(math.prod(shape) * dtype.itemsize)
        array = _GuardedArray(shape, dtype)
        array.charge = self._charge
        return array

    def _scalar(self, dtype: object, raw: object) -> np.generic:
        dtype = _plain_dtype(dtype)
        raw = raw.encode("latin1") if isinstance(raw, str) else raw
        if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
            raise pickle.UnpicklingError(f"scalar data does not match {dtype}")
        return np.frombuffer(raw, dtype)[0]

    def _encode(self, text: object, encoding: object = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
        self._charge(len(text))
        return text.encode("latin1")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(path.read_bytes()).load()
    except Exception as error:  # a crafted or corrupt pickle can raise nearly anything
        raise DataError(f"cannot read CIFAR-10 batch {path}: {_reason(error)} (truncated or not a CIFAR batch)") from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch: missing 'data' or 'labels'")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: CIFAR-10 data is a {found}, expected a uint8 array (N, 3072)")
    if isinstance(labels, list) and all(type(v) is int and 0 <= v < 2**63 for v in labels):
        labels = np.array(labels, dtype=np.int64)
    elif isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = np.asarray(labels).astype(np.int64)
    else:
        raise DataError(f"{path}: CIFAR-10 labels are not a list of non-negative integers")
    if data.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: CIFAR-10 data has {data.shape[0]} images for {labels.shape[0]} labels")
    return np.asarray(data).reshape(-1, 3, 32, 32), labels


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except NotImplementedError as error:  # scipy's answer to MATLAB v7.3 files
        raise DataError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which cannot be read; use the official {path.name} from "
            "ufldl.stanford.edu/housenumbers or re-save it in MATLAB with save(..., '-v7')"
        ) from error
    except Exception as error:  # scipy's reader given a corrupt file can raise nearly anything
        raise DataError(f"cannot read SVHN file {path}: {_reason(error)} (truncated or not a .mat file)") from error
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} is not an SVHN file: missing 'X' or 'y'")
    X, y = mat["X"], mat["y"]
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: SVHN images X are a {X.dtype} array of shape {X.shape}, expected uint8 (32, 32, 3, N)")
    if y.dtype.kind not in "iuf" or y.size != X.shape[3]:
        raise DataError(f"{path}: SVHN labels y are a {y.dtype} array of {y.size} values for {X.shape[3]} images")
    y = y.reshape(-1)
    if not np.all((y >= 0) & (y <= 10) & (y == np.round(y))):
        raise DataError(f"{path}: SVHN labels y span {y.min()}..{y.max()}, expected digits 1..10 (10 for the digit 0)")
    images = np.ascontiguousarray(np.transpose(X, (3, 2, 0, 1)))
    return images, y.astype(np.int64) % 10


def _find(name: str, root: Path, filenames: list[str], system: bool, subfolder: str = "") -> Path:
    """The first existing ``folder / subfolder / filename``, folders under ``root`` first, then (with ``system``) SYSTEM_DIRS."""
    folders = [root, root / name, root / name / "raw"]
    if name in ("mnist", "fashion-mnist"):
        folders.append(root / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name] / "raw")
    if system:
        folders += SYSTEM_DIRS.get(name, [])
    tried = [folder / subfolder / filename for folder in folders for filename in filenames]
    for path in tried:
        if path.is_file():
            return path
    looked = ", ".join(str(path) for path in tried)
    raise DataError(f"{name}: {' or '.join(filenames)} not found; looked for {looked}. Pass --data-dir to the folder with them.")


def _idx_names(prefix: str, kind: str, ndim: int) -> list[str]:
    """The names MNIST-format files go by: ``train-images-idx3-ubyte`` as distributed and
    ``train-images.idx3-ubyte`` as widely shared copies name them, gzipped or raw."""
    stems = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return [stem + suffix for stem in stems for suffix in (".gz", "")]


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None) -> ImageDataset:
    """Load ``split`` (``"train"`` or ``"test"``) of a data set in :data:`DATASETS`.

    Files are looked for under ``data_dir``, which must exist; without it, under
    :func:`default_data_dir` and then in the system folders of :data:`SYSTEM_DIRS`.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == FOLDER:
        return _load_folder(split, data_dir)
    info = DATASETS[name]
    system = data_dir is None  # an explicit folder is the only place looked in
    root = default_data_dir() if system else Path(data_dir)
    if not system and not root.is_dir():
        raise DataError(f"data folder {root} {'is not a folder' if root.exists() else 'does not exist'}")
    if name in ("mnist", "fashion-mnist"):
        prefix = "train" if split == "train" else "t10k"
        image_file = _find(name, root, _idx_names(prefix, "images", 3), system)
        label_file = _find(name, root, _idx_names(prefix, "labels", 1), system)
        images = read_idx(image_file, 3)[:, None]
        labels = read_idx(label_file, 1).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{image_file} has {images.shape[0]} images but {label_file} has {labels.shape[0]} labels")
    elif name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        parts = [_read_cifar_batch(_find(name, root, [f], system, "cifar-10-batches-py")) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    else:
        images, labels = _read_svhn(_find(name, root, [f"{split}_32x32.mat"], system))
    if len(labels) == 0:
        raise DataError(f"{name} {split}: the files hold no examples")
    expected = (info.channels, info.image_size, info.image_size)
    if images.shape[1:] != expected:
        raise DataError(f"{name} {split}: images have shape {images.shape[1:]}, expected {expected}")
    if labels.min() < 0 or labels.max() >= len(info.classes):
        raise DataError(f"{name} {split}: labels span {labels.min()}..{labels.max()}, outside 0..{len(info.classes) - 1}")
    return ImageDataset(torch.from_numpy(np.array(images)), torch.from_numpy(labels), info)


#: The data set read from a folder of images in class sub-folders (``DIR/train/CLASS/*``, ``DIR/test/CLASS/*``).
FOLDER = "folder"
#: Every name :func:`load_dataset` accepts.
DATASET_NAMES = [*DATASETS, FOLDER]
#: The largest side of the square images a folder data set is resized to (the first image's width).
MAX_IMAGE_SIDE = 1024
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _class_images(folder: Path) -> list[tuple[str, list[Path]]]:
    """``(class, image files)`` per sub-folder of ``folder``, in sorted order."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} not found: expected DIR/train/CLASS/*.png and DIR/test/CLASS/*.png")
    classes = [
        (d.name, sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        for d in sorted(folder.iterdir())
        if d.is_dir()
    ]
    if not classes or not any(files for _, files in classes):
        raise DataError(f"image folder {folder} has no class sub-folders with images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return classes


@functools.lru_cache(maxsize=4)
def _folder_info(root: Path) -> DatasetInfo:
    """Classes, channels, size and normalisation of an image folder, from its training split: grey
    when the first image is, its width as the (square) size, mean and std over the training images."""
    from PIL import Image, UnidentifiedImageError

    classes = _class_images(root / "train")
    if len(classes) < 2:
        raise DataError(f"image folder {root / 'train'} has {len(classes)} class sub-folder; a classifier needs at least two")
    first = next(files[0] for _, files in classes if files)
    try:
        with Image.open(first) as image:
            channels, size = (1 if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "F") else 3), image.width
            shape = f"{image.width}x{image.height}"
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"cannot read image {first}: {error}") from error
    if size > MAX_IMAGE_SIDE:
        raise DataError(
            f"image {first} is {shape} pixels: every image is resized to the first one's width, at most "
            f"{MAX_IMAGE_SIDE}; resize the images first"
        )
    images = np.stack([read_image(path, channels, size) for _, files in classes for path in files]).astype(np.float64) / 255
    mean = tuple(float(v) for v in images.mean(axis=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in images.std(axis=(0, 2, 3)))
    return DatasetInfo(FOLDER, channels, size, [name for name, _ in classes], mean, std)


def folder_info(data_dir: str | Path) -> DatasetInfo:
    """The :class:`DatasetInfo` of the image folder ``data_dir`` (see :data:`FOLDER`)."""
    return _folder_info(Path(data_dir).resolve())


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Shape, classes and normalisation of a data set: fixed for the named ones, read for a folder."""
    if name == FOLDER:
        if data_dir is None:
            raise DataError("--dataset folder needs --data-dir DIR (with DIR/train/CLASS/* and DIR/test/CLASS/*)")
        return folder_info(data_dir)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")
    return DATASETS[name]


def _load_folder(split: str, data_dir: str | Path | None) -> ImageDataset:
    info = dataset_info(FOLDER, data_dir)
    root = Path(data_dir)
    present = dict(_class_images(root / split))
    unknown = set(present) - set(info.classes)
    if unknown:
        raise DataError(f"{root / split} has classes {sorted(unknown)} that {root / 'train'} lacks")
    pairs = [(path, label) for label, name in enumerate(info.classes) for path in present.get(name, [])]
    if not pairs:
        raise DataError(f"{root / split} holds no images")
    images = np.stack([read_image(path, info.channels, info.image_size) for path, _ in pairs])
    labels = np.array([label for _, label in pairs], dtype=np.int64)
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), info)


def read_image(path: str | Path, channels: int, size: int) -> np.ndarray:
    """One image file as ``uint8`` ``(channels, size, size)``: grey (1) or RGB (3 channels), resized.

    Alpha is dropped; 16-bit and 32-bit integer images are scaled from 0..65535, float images
    from 0..1 (or taken as they are when within 0..255). Raises :class:`DataError` for a missing
    or unreadable file, an image with more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` (a
    decompression bomb) and values outside those ranges.
    """
    from PIL import Image, ImageOps

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} {'is not a file' if path.exists() else 'not found'}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as file, Image.open(file) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                if image.mode == "F" or image.mode.startswith("I"):
                    grey = _scaled_grey(np.asarray(image, dtype=np.float64), image.mode, path)
                    resized = np.asarray(Image.fromarray(grey).resize((size, size)))
                    return np.repeat(np.clip(np.rint(resized), 0, 255).astype(np.uint8)[None], channels, axis=0)
                if image.mode in ("P", "PA"):
                    image = image.convert("RGBA")  # palette transparency, then dropped with the alpha band
                array = np.asarray(image.convert("L" if channels == 1 else "RGB").resize((size, size)), dtype=np.uint8)
                return array[None] if channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"image {path} refused: {_reason(error)}") from error
    except Image.UnidentifiedImageError as error:
        raise DataError(f"cannot read image {path}: not an image file PIL can read, or a corrupt one") from error
    except Exception as error:  # PIL given a corrupt file can raise nearly anything
        raise DataError(f"cannot read image {path}: {_reason(error)}") from error


def _scaled_grey(values: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """Pixels ``(H, W)`` of an integer (``I*``) or float (``F``) image as ``float32`` in 0..255."""
    if np.isnan(values).any():
        found = "include NaN"
    else:
        low, high = float(values.min()), float(values.max())
        found = f"span {low:g}..{high:g}"
        if mode == "F" and low >= 0 and high <= 255:
            return (values * (255.0 if high <= 1 else 1.0)).astype(np.float32)
        if mode != "F" and low >= 0 and high <= 65535:
            return (values / 257.0).astype(np.float32)
    expected = "0..1 or 0..255" if mode == "F" else "0..65535"
    raise DataError(f"image {path}: {mode} pixel values {found}, expected values within {expected}")
