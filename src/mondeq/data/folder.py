"""A folder of image files in class sub-folders (``DIR/train/CLASS/*``, ``DIR/test/CLASS/*``), and
:func:`read_image` for one image file (PNG, JPEG, TIFF, ... of any bit depth)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import DatasetInfo, ImageDataset
from .files import reason
from .registry import DataReader

__all__ = ["FOLDER", "ImageFolder", "folder_info", "read_image"]

#: The data set read from a folder of images in class sub-folders (``DIR/train/CLASS/*``, ``DIR/test/CLASS/*``).
FOLDER = "folder"
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
        raise DataError(f"image {path} refused: {reason(error)}") from error
    except Image.UnidentifiedImageError as error:
        raise DataError(f"cannot read image {path}: not an image file PIL can read, or a corrupt one") from error
    except Exception as error:  # PIL given a corrupt file can raise nearly anything
        raise DataError(f"cannot read image {path}: {reason(error)}") from error


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


class ImageFolder(DataReader):
    """Images in class sub-folders: classes are the sub-folders of ``DIR/train`` in sorted order;
    the images are grey when the first one is, resized to its width (square); mean and standard
    deviation come from the training images."""

    name = FOLDER

    def describe(self, data_dir: str | Path | None = None) -> DatasetInfo:
        if data_dir is None:
            raise DataError("--dataset folder needs --data-dir DIR (with DIR/train/CLASS/* and DIR/test/CLASS/*)")
        return folder_info(data_dir)

    def load(self, split: str, data_dir: str | Path | None = None) -> ImageDataset:
        info = self.describe(data_dir)
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
