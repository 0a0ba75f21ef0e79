"""Image data sets from their standard distribution files, without torchvision.

Supported: Fashion-MNIST and MNIST (IDX, optionally gzipped), CIFAR-10 (the python pickle
batches, read by a restricted unpickler), SVHN (the ``*_32x32.mat`` files, read by scipy) and a
folder of image files in class sub-folders. Images are kept as ``uint8`` tensors ``(N, C, H, W)``
and normalised per batch; augmentation (crop and flip, translation, erasing) is done with torch
ops on whole batches. One job a module:

- ``dataset``: :class:`DatasetInfo`, :class:`ImageDataset`, :class:`Batches`;
- ``augment``: :class:`Augmentation` of a batch;
- ``registry``: :class:`DataReader` and the registry :data:`READERS` (:func:`load_dataset`);
- one module a format: ``idx``, ``cifar``, ``svhn``,
  ``folder`` (with :func:`read_image` for one image file).
"""

from .augment import Augmentation, augment_batch, erase_batch, translate_batch
from .dataset import Batches, DatasetInfo, ImageDataset, default_data_dir
from .registry import DATASETS, READERS, DataReader, _discover, dataset_info, load_dataset

_discover()

from .folder import FOLDER, folder_info, read_image  # noqa: E402
from .idx import read_idx, write_idx, write_synthetic_mnist  # noqa: E402

#: Every name :func:`load_dataset` accepts (a view of :data:`READERS`: readers defined later appear in it).
DATASET_NAMES = READERS.keys()

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "FOLDER",
    "READERS",
    "Batches",
    "DataReader",
    "DatasetInfo",
    "ImageDataset",
    "Augmentation",
    "augment_batch",
    "erase_batch",
    "dataset_info",
    "default_data_dir",
    "folder_info",
    "load_dataset",
    "read_idx",
    "translate_batch",
    "read_image",
    "write_idx",
    "write_synthetic_mnist",
]
