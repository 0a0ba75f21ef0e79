"""Images in memory and how training sees them: the data set description, the data set, its batches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from ..validation import FINITE, POSITIVE, POSITIVE_INT, Number, Schema
from .augment import NO_AUGMENTATION, Augmentation

__all__ = ["DATA_SCHEMA", "Batches", "DatasetInfo", "ImageDataset", "default_data_dir"]

#: An image side a data set may declare.
IMAGE_SIZE = Number(integer=True, low=1, high=4096, high_open=False)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know of its data set (stored in checkpoints and exported files): its name,
    channels, image side, class names, the per-channel normalisation, and whether training augments it."""

    name: str
    channels: int
    image_size: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False  # whether training uses crop + flip augmentation by default

    #: How :meth:`from_dict` words what it accepts.
    DESCRIBED = "a data set description: a name, channels 1 or 3, an image size, 2+ class names, a mean and a std > 0 per channel"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def accepts(cls, data: object) -> bool:
        """Whether ``data`` is what :meth:`to_dict` writes (a hand-edited or damaged one is not)."""
        if not isinstance(data, dict) or not {"name", "channels", "image_size", "classes", "mean", "std"} <= set(data):
            return False
        if set(data) - {f.name for f in fields(cls)} or not isinstance(data.get("augment", False), bool):
            return False
        channels, classes = data["channels"], data["classes"]

        def per_channel(key: str, numbers: Number) -> bool:
            return isinstance(data[key], list) and len(data[key]) == channels and all(numbers.accepts(v) for v in data[key])

        return (
            isinstance(data["name"], str)
            and channels in (1, 3)
            and IMAGE_SIZE.accepts(data["image_size"])
            and isinstance(classes, list)
            and len(classes) >= 2
            and all(isinstance(c, str) for c in classes)
            and per_channel("mean", FINITE)
            and per_channel("std", POSITIVE)
        )

    @classmethod
    def from_dict(cls, data: dict) -> DatasetInfo:
        """The description :meth:`to_dict` wrote; ``ValueError`` (:attr:`DESCRIBED`) for anything else."""
        if not cls.accepts(data):
            raise ValueError(f"expected {cls.DESCRIBED}, got {str(data)[:80]}")
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    def normalize(self, images: Tensor) -> Tensor:
        """``uint8`` images ``(N, C, H, W)`` to floats normalised with this data set's mean and std."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std


#: The checkpoint entry of a run's data set description.
DATA_SCHEMA: Schema = {"data": (DatasetInfo.accepts, DatasetInfo.DESCRIBED)}


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
        if count is not None:
            POSITIVE_INT.check("count", count)
        if count is None or count >= len(self):
            return self
        return ImageDataset(self.images[:count], self.labels[:count], self.info)


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
        augment: Augmentation = NO_AUGMENTATION,
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
                images = self.augment(images, self.generator)
            yield (
                self.dataset.normalize(images.to(self.device)),
                self.dataset.labels[index].to(self.device),
            )
