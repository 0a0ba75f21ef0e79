"""The registry of data readers: one :class:`DataReader` subclass a data set, found by name.

Every subclass with a ``name`` registers itself when it is defined: the readers of this package's
modules are imported (discovered) with it, so adding a data set format is adding a module here
that defines one (or defining one in your own code, before training with it).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..errors import DataError
from .dataset import DatasetInfo, ImageDataset, default_data_dir

__all__ = ["DATASETS", "READERS", "DataReader", "dataset_info", "load_dataset"]

#: Readers by data set name (``mondeq train --dataset NAME``).
READERS: dict[str, DataReader] = {}
#: The descriptions of the data sets whose shape and classes are fixed (all but a folder of images).
DATASETS: dict[str, DatasetInfo] = {}


class DataReader:
    """A data set in its distribution format: what it is and how a split is read.

    Subclasses set :attr:`name` and :attr:`info` and implement :meth:`read`; a reader whose
    description comes from its files (a folder of images) overrides :meth:`describe` and :meth:`load`.

    Attributes:
        name: the registry key and ``--dataset`` value.
        info: the data set's shape, classes and normalisation (``None``: read from the files).
        folders: sub-folders of the data folder where its files may also lie.
        system_dirs: system-wide folders searched when no data folder was given.
    """

    name: ClassVar[str] = ""
    info: ClassVar[DatasetInfo | None] = None
    folders: ClassVar[tuple[str, ...]] = ()
    system_dirs: ClassVar[tuple[Path, ...]] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            READERS[cls.name] = cls()
            if cls.info is not None:
                DATASETS[cls.name] = cls.info

    def describe(self, data_dir: str | Path | None = None) -> DatasetInfo:
        """The data set's description."""
        assert self.info is not None, f"reader {self.name!r} sets no info: it must override describe"
        return self.info

    def read(self, split: str, find) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of ``split``: ``uint8`` ``(N, C, H, W)`` and integers ``(N,)``. ``find(names,
        subfolder="")`` is the path of the first of the file names found in the data folders."""
        raise NotImplementedError

    def find(self, root: Path, filenames: list[str], system: bool, subfolder: str = "") -> Path:
        """The first existing ``folder / subfolder / filename``: folders under ``root`` first
        (``root``, ``root/NAME``, ``root/NAME/raw`` and :attr:`folders`), then (with ``system``) :attr:`system_dirs`."""
        folders = [root, root / self.name, root / self.name / "raw", *(root / f for f in self.folders)]
        if system:
            folders += list(self.system_dirs)
        tried = [folder / subfolder / filename for folder in folders for filename in filenames]
        for path in tried:
            if path.is_file():
                return path
        looked = ", ".join(str(path) for path in tried)
        raise DataError(
            f"{self.name}: {' or '.join(filenames)} not found; looked for {looked}. Pass --data-dir to the folder with them."
        )

    def load(self, split: str, data_dir: str | Path | None = None) -> ImageDataset:
        """Split ``split`` read from ``data_dir`` (which must exist; without it, from
        :func:`~mondeq.data.default_data_dir` and then :attr:`system_dirs`), checked against :attr:`info`."""
        info = self.describe(data_dir)
        system = data_dir is None  # an explicit folder is the only place looked in
        root = default_data_dir() if system else Path(data_dir)
        if not system and not root.is_dir():
            raise DataError(f"data folder {root} {'is not a folder' if root.exists() else 'does not exist'}")
        images, labels = self.read(split, lambda names, subfolder="": self.find(root, names, system, subfolder))
        if len(labels) == 0:
            raise DataError(f"{self.name} {split}: the files hold no examples")
        expected = (info.channels, info.image_size, info.image_size)
        if images.shape[1:] != expected:
            raise DataError(f"{self.name} {split}: images have shape {images.shape[1:]}, expected {expected}")
        if labels.min() < 0 or labels.max() >= len(info.classes):
            raise DataError(
                f"{self.name} {split}: labels span {labels.min()}..{labels.max()}, outside 0..{len(info.classes) - 1}"
            )
        return ImageDataset(torch.from_numpy(np.array(images)), torch.from_numpy(np.asarray(labels, dtype=np.int64)), info)


def _reader(name: str) -> DataReader:
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(READERS)}")
    return READERS[name]


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None) -> ImageDataset:
    """Load ``split`` (``"train"`` or ``"test"``) of the data set ``name`` (:data:`READERS`).

    Files are looked for under ``data_dir``, which must exist; without it, under
    :func:`~mondeq.data.default_data_dir` and then in the reader's system folders.
    """
    reader = _reader(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return reader.load(split, data_dir)


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Shape, classes and normalisation of a data set: fixed for most, read from the files of a folder."""
    return _reader(name).describe(data_dir)


def _discover() -> None:
    """Import every module of this package, so that the readers they define register."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")
