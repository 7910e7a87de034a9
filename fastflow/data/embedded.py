"""The embedded data set: colour patches of the two photographs that ship inside scikit-learn.

``sklearn.datasets.load_sample_images`` holds ``china.jpg`` and ``flower.jpg`` (427 x 640 each), so
this data set needs no download. Each photo is tiled into a grid of ``size x size`` cells; a fixed
eighth of the cells of each photo (chosen by a fixed seed) is the validation split. The training split
is every ``size x size`` window at stride ``size // 2`` that overlaps no validation cell, so no
training pixel appears in a validation patch. The label of a patch is the photo it comes from
(0 = china, 1 = flower), which gives the linear probe something to classify.

With ``size = 32``: 64 validation patches (32 per photo) and 1,483 training patches.
"""

from __future__ import annotations

import numpy as np
import torch

from fastflow.data.datasets import TensorImageDataset
from fastflow.errors import UsageError

PHOTOS = ("china", "flower")
VALID_FRACTION = 1 / 8
SPLIT_SEED = 20210401


def load_photos() -> list[np.ndarray]:
    """The two sample photographs as uint8 arrays ``[H, W, 3]``, in the order of :data:`PHOTOS`."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    by_name = {name.rsplit("/", 1)[-1].split(".")[0]: img for name, img in zip(bunch.filenames, bunch.images)}
    return [by_name[name] for name in PHOTOS]


def _validation_cells(rows: int, cols: int, photo: int) -> np.ndarray:
    """Boolean ``[rows, cols]``: the grid cells of one photo held out for validation."""
    rng = np.random.default_rng([SPLIT_SEED, photo])
    count = max(1, round(rows * cols * VALID_FRACTION))
    mask = np.zeros(rows * cols, dtype=bool)
    mask[rng.choice(rows * cols, size=count, replace=False)] = True
    return mask.reshape(rows, cols)


def _patches(photo: np.ndarray, size: int, index: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training windows, validation cells) of one photo, each ``[size, size, 3]``."""
    rows, cols = photo.shape[0] // size, photo.shape[1] // size
    cells = _validation_cells(rows, cols, index)
    held_out = np.zeros(photo.shape[:2], dtype=bool)
    valid = []
    for r, c in zip(*np.nonzero(cells)):
        held_out[r * size : (r + 1) * size, c * size : (c + 1) * size] = True
        valid.append(photo[r * size : (r + 1) * size, c * size : (c + 1) * size])
    stride = max(1, size // 2)
    train = []
    for top in range(0, photo.shape[0] - size + 1, stride):
        for left in range(0, photo.shape[1] - size + 1, stride):
            if not held_out[top : top + size, left : left + size].any():
                train.append(photo[top : top + size, left : left + size])
    return train, valid


def embedded_patches(size: int = 32) -> tuple[TensorImageDataset, TensorImageDataset]:
    """(train, valid) patch data sets of uint8 images ``[3, size, size]`` with the photo as label."""
    if not 4 <= size <= 128:
        raise UsageError(f"embedded patch size must be between 4 and 128, got {size}")
    splits: dict[str, tuple[list, list]] = {"train": ([], []), "valid": ([], [])}
    for index, photo in enumerate(load_photos()):
        train, valid = _patches(photo, size, index)
        for name, patches in (("train", train), ("valid", valid)):
            splits[name][0].extend(patches)
            splits[name][1].extend([index] * len(patches))

    def to_dataset(images: list[np.ndarray], labels: list[int]) -> TensorImageDataset:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        return TensorImageDataset(x, torch.tensor(labels), classes=PHOTOS)

    return to_dataset(*splits["train"]), to_dataset(*splits["valid"])
