"""Images in memory and how training sees them: the data set description, the data set, its batches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..validation import POSITIVE_INT
from .augment import NO_AUGMENTATION, Augmentation

__all__ = ["Batches", "DatasetInfo", "ImageDataset", "default_data_dir"]


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
