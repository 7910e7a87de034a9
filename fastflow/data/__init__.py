"""Data sets (uint8 images ``[3, H, W]`` with int labels, -1 where none), augmentations and data order.

:func:`build_datasets` returns the (train, valid) splits of a named data set; the training loop wraps
the training split in :class:`Augmented` with the data set's augmentation from
:data:`fastflow.data.transforms.AUGMENTATIONS`.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from fastflow.data.datasets import (
    Augmented,
    DataNotFoundError,
    ImageFolderDataset,
    TensorImageDataset,
    cifar10,
    image_folder,
    imagenet64,
)
from fastflow.data.embedded import embedded_patches
from fastflow.data.order import EpochBatchSampler
from fastflow.data.transforms import AUGMENTATIONS

DATASETS = ("embedded", "cifar10", "imagenet64", "lsun", "celeba")
NATIVE_SIZES = {"cifar10": 32, "imagenet64": 64}


def default_data_path(dataset: str) -> Path:
    """Where a data set is looked for when no path is given: ``./data/<dataset>``."""
    return Path("data") / dataset


def build_datasets(dataset: str, data_path: str | Path | None, image_size: int) -> tuple[Dataset, Dataset]:
    """The (train, valid) splits of ``dataset`` at ``image_size``, without augmentation.

    Raises ValueError for an unknown name or a size the data set does not have, and
    :class:`DataNotFoundError` (saying where it looked and how to get the data) when files are missing.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if dataset in NATIVE_SIZES and image_size != NATIVE_SIZES[dataset]:
        raise ValueError(
            f"{dataset} images are {NATIVE_SIZES[dataset]}x{NATIVE_SIZES[dataset]}, "
            f"but the model expects {image_size}x{image_size}"
        )
    if dataset == "embedded":
        return embedded_patches(image_size)
    root = Path(data_path) if data_path else default_data_path(dataset)
    if dataset == "cifar10":
        return cifar10(root, train=True), cifar10(root, train=False)
    if dataset == "imagenet64":
        return imagenet64(root, train=True), imagenet64(root, train=False)
    return image_folder(dataset, root, True, image_size), image_folder(dataset, root, False, image_size)


__all__ = [
    "AUGMENTATIONS",
    "Augmented",
    "DATASETS",
    "DataNotFoundError",
    "EpochBatchSampler",
    "ImageFolderDataset",
    "TensorImageDataset",
    "build_datasets",
    "default_data_path",
]
