"""Data sets (uint8 images ``[3, H, W]`` with int labels, -1 where none), augmentations and data order.

:data:`DATASETS` (:mod:`fastflow.data.registry`) holds every fact about each named data set;
:func:`build_datasets` returns its (train, valid) splits.
"""

from fastflow.data.datasets import Augmented, DataNotFoundError, ImageFolderDataset, TensorImageDataset
from fastflow.data.order import EpochBatchSampler
from fastflow.data.registry import (
    DATASET_NAMES,
    DATASETS,
    DEFAULT_DATASET,
    LABELLED_DATASETS,
    DatasetSpec,
    build_datasets,
    dataset_spec,
    default_data_path,
)

__all__ = [
    "Augmented",
    "DATASETS",
    "DATASET_NAMES",
    "DEFAULT_DATASET",
    "LABELLED_DATASETS",
    "DataNotFoundError",
    "DatasetSpec",
    "EpochBatchSampler",
    "ImageFolderDataset",
    "TensorImageDataset",
    "build_datasets",
    "dataset_spec",
    "default_data_path",
]
