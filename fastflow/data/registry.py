"""The data sets fastflow knows, one :class:`DatasetSpec` each: how to load the splits, the native
image size, the training augmentation, where to get the files, and the paper's training defaults.

:func:`build_datasets` returns the (train, valid) splits of a named data set; the training loop wraps
the training split in :class:`~fastflow.data.datasets.Augmented` with the spec's ``augmentation``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from fastflow.data.datasets import DataNotFoundError, cifar10, image_folder, imagenet64
from fastflow.data.embedded import embedded_patches
from fastflow.data.transforms import Augmentation, pad_crop_flip, random_flip
from fastflow.errors import UsageError

Splits = tuple[Dataset, Dataset]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One data set.

    ``splits(root, image_size)`` loads (train, valid) from the folder ``root``; ``native_size`` is
    the only image size the data set has (None: images are resized to the model's size);
    ``labelled``: items carry class labels (else -1); ``augmentation`` is applied to training images
    when ``train.augment`` is on; ``how_to_get`` completes the "To get it, ..." sentence of a
    :class:`DataNotFoundError`; ``train_defaults`` are the ``train`` config values of this data set
    (paper Table 5 and the paper's CIFAR-10 command; epochs for the other data sets are not published).
    """

    name: str
    splits: Callable[[Path, int], Splits]
    augmentation: Augmentation | None
    train_defaults: dict[str, Any]
    native_size: int | None = None
    how_to_get: str = ""
    labelled: bool = False


def _embedded(root: Path, size: int) -> Splits:
    return embedded_patches(size)


def _cifar10(root: Path, size: int) -> Splits:
    return cifar10(root, train=True), cifar10(root, train=False)


def _imagenet64(root: Path, size: int) -> Splits:
    return imagenet64(root, train=True), imagenet64(root, train=False)


def _folder(name: str) -> Callable[[Path, int], Splits]:
    def splits(root: Path, size: int) -> Splits:
        return image_folder(name, root, True, size), image_folder(name, root, False, size)

    return splits


# ImageNet 64, LSUN 128 and CelebA-HQ 256 share these (paper Table 5).
_LARGE_IMAGES = dict(warmup_steps=200, weight_decay=5e-4, epochs=500, valid_interval=5000)

_SPECS = (
    DatasetSpec(
        "embedded",
        _embedded,
        random_flip,
        dict(
            batch_size=16,
            eval_batch_size=64,
            init_batch_size=256,
            warmup_steps=20,
            weight_decay=1e-6,
            steps=300,
            valid_interval=100,
            checkpoint_interval=100,
            num_samples=64,
        ),
        labelled=True,
    ),
    DatasetSpec(
        "cifar10",
        _cifar10,
        pad_crop_flip,
        dict(
            batch_size=512,
            batch_steps=2,
            eval_batch_size=1000,
            init_batch_size=2048,
            warmup_steps=50,
            weight_decay=1e-6,
            epochs=15000,
            valid_interval=970,
        ),
        native_size=32,
        labelled=True,
        how_to_get="download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it there "
        "(it creates cifar-10-batches-py/)",
    ),
    DatasetSpec(
        "imagenet64",
        _imagenet64,
        None,
        dict(_LARGE_IMAGES, batch_size=256, eval_batch_size=256, init_batch_size=1024),
        native_size=64,
        labelled=True,
        how_to_get="download Imagenet64_train_part1/part2_npz and Imagenet64_val_npz from "
        "https://image-net.org/download-images (downsampled ImageNet 64x64) and unpack the "
        "train_data_batch_*.npz and val_data.npz files there",
    ),
    DatasetSpec(
        "lsun",
        _folder("lsun"),
        None,
        dict(_LARGE_IMAGES, batch_size=256, eval_batch_size=128, init_batch_size=512),
        how_to_get="export the LSUN bedroom lmdb (https://github.com/fyu/lsun) to image files in that folder",
    ),
    DatasetSpec(
        "celeba",
        _folder("celeba"),
        random_flip,
        dict(_LARGE_IMAGES, batch_size=40, eval_batch_size=40, init_batch_size=256),
        how_to_get="put the 30,000 CelebA-HQ images there (e.g. extracted from Glow's celeba-tfr records)",
    ),
)
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
DATASET_NAMES = tuple(DATASETS)
DEFAULT_DATASET = "embedded"
LABELLED_DATASETS = tuple(name for name, spec in DATASETS.items() if spec.labelled)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of data set ``name``; ValueError naming the known ones otherwise."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; expected one of {DATASET_NAMES}")
    return DATASETS[name]


def default_data_path(dataset: str) -> Path:
    """Where a data set is looked for when no path is given: ``./data/<dataset>``."""
    return Path("data") / dataset


def build_datasets(dataset: str, data_path: str | Path | None, image_size: int) -> Splits:
    """The (train, valid) splits of ``dataset`` at ``image_size``, without augmentation.

    Raises ValueError for an unknown name or a size the data set does not have, and
    :class:`DataNotFoundError` (saying where it looked and how to get the data) when files are missing.
    """
    spec = dataset_spec(dataset)
    if spec.native_size is not None and image_size != spec.native_size:
        raise UsageError(
            f"{dataset} images are {spec.native_size}x{spec.native_size}, "
            f"but the model expects {image_size}x{image_size}"
        )
    root = Path(data_path) if data_path else default_data_path(dataset)
    try:
        return spec.splits(root, image_size)
    except DataNotFoundError as err:
        raise DataNotFoundError(
            f"{err} To get it, {spec.how_to_get}, or point --data (train.data_path) at the folder that holds it."
        ) from None
