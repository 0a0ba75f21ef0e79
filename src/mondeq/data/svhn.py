"""SVHN: the ``train_32x32.mat`` / ``test_32x32.mat`` files, read by scipy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import DatasetInfo
from .files import reason
from .registry import DataReader

__all__ = ["SVHN"]

DIGITS = [str(i) for i in range(10)]


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
        raise DataError(f"cannot read SVHN file {path}: {reason(error)} (truncated or not a .mat file)") from error
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


class SVHN(DataReader):
    name = "svhn"
    info = DatasetInfo("svhn", 3, 32, DIGITS, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))

    def read(self, split: str, find: Callable[..., Path]) -> tuple[np.ndarray, np.ndarray]:
        return _read_svhn(find([f"{split}_32x32.mat"]))
