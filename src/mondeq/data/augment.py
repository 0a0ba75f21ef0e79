"""Augmentation of a whole batch of images in a few tensor operations (no per-image Python loop).

Images are the stored pixels ``(N, C, H, W)`` before normalisation; every random draw comes from
the batch's generator, so the batches of a run depend only on its seed and epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NO_AUGMENTATION", "Augmentation", "augment_batch", "erase_batch", "translate_batch"]

#: Random erasing: the blanked rectangle's share of the image and its aspect ratio (Zhong et al., 2020).
ERASE_AREA = (0.02, 0.25)
ERASE_ASPECT = (0.3, 3.3)


def translate_batch(images: Tensor, generator: torch.Generator, pixels: int, flip: bool = False) -> Tensor:
    """Each image moved by a random whole number of pixels in ``[-pixels, pixels]`` along each axis
    (the border filled with zeros), and with ``flip`` mirrored left-right with probability 1/2: one
    gather for the batch."""
    n, channels, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pixels, pixels, pixels, pixels))
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(images.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(images.device)  # (n, w)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(channels, device=images.device)[None, :, None, None]
    moved = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    if not flip:
        return moved
    flipped = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    return torch.where(flipped[:, None, None, None], moved.flip(-1), moved)


def augment_batch(images: Tensor, generator: torch.Generator, padding: int | None = None) -> Tensor:
    """Random crop with zero padding and random horizontal flip (CIFAR-10's augmentation);
    ``padding`` defaults to an eighth of the image side (4 pixels for 32, 3 for 28)."""
    padding = max(1, images.shape[-1] // 8) if padding is None else padding
    return translate_batch(images, generator, padding, flip=True)


def erase_batch(images: Tensor, generator: torch.Generator, probability: float) -> Tensor:
    """Random erasing: with ``probability`` per image, one rectangle of random area (a share of
    :data:`ERASE_AREA` of the image) and aspect ratio (:data:`ERASE_ASPECT`) set to 0, the
    background of Fashion-MNIST and MNIST. One mask for the batch."""
    n, _, h, w = images.shape
    chosen = torch.rand(n, generator=generator) < probability
    area = torch.empty(n).uniform_(*ERASE_AREA, generator=generator) * h * w
    aspect = torch.exp(torch.empty(n).uniform_(*map(math.log, ERASE_ASPECT), generator=generator))
    height = torch.sqrt(area * aspect).round().clamp(1, h)
    width = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (torch.rand(n, generator=generator) * (h - height + 1)).floor()
    left = (torch.rand(n, generator=generator) * (w - width + 1)).floor()
    rows = torch.arange(h)[None]
    cols = torch.arange(w)[None]
    inside_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # (n, h)
    inside_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])  # (n, w)
    mask = (chosen[:, None, None] & inside_rows[:, :, None] & inside_cols[:, None, :]).to(images.device)
    return images.masked_fill(mask[:, None], 0)


@dataclass(frozen=True)
class Augmentation:
    """What a training batch goes through, in this order.

    Attributes:
        crop_flip: random crop (an eighth of the side, or ``shift`` pixels when given) and flip.
        shift: random translation by up to this many pixels along each axis.
        erase: the probability of random erasing per image.
    """

    crop_flip: bool = False
    shift: int = 0
    erase: float = 0.0

    def __bool__(self) -> bool:
        return self.crop_flip or self.shift > 0 or self.erase > 0

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.crop_flip:
            images = augment_batch(images, generator, self.shift or None)
        elif self.shift:
            images = translate_batch(images, generator, self.shift)
        if self.erase:
            images = erase_batch(images, generator, self.erase)
        return images


#: The batches as stored: no transformation.
NO_AUGMENTATION = Augmentation()
