"""CIFAR-10: the python pickle batches, read by a restricted unpickler that only rebuilds numeric
numpy arrays no larger than the file can hold."""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import DatasetInfo
from .files import reason
from .registry import DataReader

__all__ = ["CIFAR10"]

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

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
        raise DataError(f"cannot read CIFAR-10 batch {path}: {reason(error)} (truncated or not a CIFAR batch)") from error
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


class CIFAR10(DataReader):
    name = "cifar10"
    info = DatasetInfo("cifar10", 3, 32, CIFAR_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment=True)

    def read(self, split: str, find: Callable[..., Path]) -> tuple[np.ndarray, np.ndarray]:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        parts = [_read_cifar_batch(find([f], "cifar-10-batches-py")) for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
