"""Image data sets. Every item is ``(image, label)``: ``image`` is uint8 ``[3, H, W]`` (the model does
the n-bit preprocessing and dequantisation itself) and ``label`` an int, -1 where the data set has none.

Sources (nothing is ever downloaded):

- ``cifar10``: the python-pickle layout (``cifar-10-batches-py/``) read by torchvision with
  ``download=False``.
- ``imagenet64``: the downsampled-ImageNet npz files, ``train_data_batch_*.npz`` and ``val_data.npz``,
  key ``data`` (``N x 12288`` uint8, channel-planar) and ``labels`` (1-based). Uncompressed files (as
  distributed) are memory-mapped, so several processes share one copy of the 15.7 GB training split.
- ``lsun`` and ``celeba``: a folder of images (jpg, jpeg, png, webp, bmp; searched recursively).
  With ``train/`` and ``valid/`` (or ``val/``) sub-folders those are the splits; otherwise the files
  are sorted by path and the last min(3000, 10%) are the validation split (CelebA-HQ: 27,000 /
  3,000, as in the paper). Each image is center-cropped to its largest square and resized to the
  model's size. A file that is not a readable image is skipped with a warning.
"""

from __future__ import annotations

import bisect
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from fastflow.data.transforms import square_resize
from fastflow.errors import DataError
from fastflow.seeding import mix_seed

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VALID_FOLDERS = ("valid", "val", "validation")
# A folder without split sub-folders: the last min(MAX_HELD_OUT, N // HELD_OUT_DIVISOR) files validate.
MAX_HELD_OUT, HELD_OUT_DIVISOR = 3000, 10


class DataNotFoundError(FileNotFoundError):
    """A data set that is not where it was looked for; the message says where and how to get it."""


def not_found(dataset: str, root: Path, what: str) -> DataNotFoundError:
    """What is missing and where; :func:`fastflow.data.build_datasets` adds how to get the data."""
    return DataNotFoundError(f"{dataset}: {what} at {root.resolve()}.")


class TensorImageDataset(Dataset):
    """Images held in memory: uint8 ``[N, 3, H, W]`` and int labels ``[N]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] = ()) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DataError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise DataError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images, self.labels, self.classes = images, labels.long(), tuple(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def cifar10(root: Path, train: bool) -> TensorImageDataset:
    """CIFAR-10 from ``root`` (the folder holding ``cifar-10-batches-py/``, or that folder itself)."""
    import torchvision

    if root.name == "cifar-10-batches-py":
        root = root.parent
    if not (root / "cifar-10-batches-py").is_dir():
        raise not_found("cifar10", root, "no cifar-10-batches-py/ folder")
    try:
        data = torchvision.datasets.CIFAR10(str(root), train=train, download=False)
    except RuntimeError as err:  # torchvision's integrity check failed
        raise not_found("cifar10", root, f"incomplete or corrupt CIFAR-10 files ({err})") from None
    images = torch.from_numpy(np.ascontiguousarray(data.data)).permute(0, 3, 1, 2).contiguous()
    return TensorImageDataset(images, torch.tensor(data.targets), classes=data.classes)


def npz_member(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of an npz file, memory-mapped when it is stored uncompressed (as np.savez writes
    it), so that processes share the page cache instead of each holding a copy; loaded otherwise."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path) as npz:
            return npz[key]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the member's local header: name and extra-field lengths at bytes 26-29
        f.seek(
            info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        )
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class NpzImageDataset(Dataset):
    """Downsampled ImageNet: the ``data`` rows (``N x 3*S*S`` uint8) of several npz files, ``[3, S, S]``."""

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.size = size
        self.data: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        for path in files:
            with np.load(path) as npz:
                if "data" not in npz:
                    raise DataError(f"{path} has no 'data' array (keys: {sorted(npz.keys())})")
                labels = np.asarray(npz["labels"], dtype=np.int64) - 1 if "labels" in npz else None
            data = npz_member(path, "data")
            labels = labels if labels is not None else np.full(len(data), -1)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * size * size:
                raise DataError(f"{path}: 'data' must be uint8 [N, {3 * size * size}], got {data.dtype} {data.shape}")
            self.data.append(data)
            self.labels.append(labels)
        self.offsets = np.cumsum([0] + [len(d) for d in self.data]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        part = bisect.bisect_right(self.offsets, index) - 1
        row = index - self.offsets[part]
        image = torch.from_numpy(self.data[part][row].copy()).view(3, self.size, self.size)
        return image, int(self.labels[part][row])


def imagenet64(root: Path, train: bool) -> NpzImageDataset:
    """Downsampled ImageNet 64x64 from the npz files in ``root``."""
    if not root.is_dir():
        raise not_found("imagenet64", root, "no such folder")
    if train:
        files = sorted(root.glob("train_data_batch_*.npz"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    else:
        files = sorted(root.glob("val_data*.npz"))
    if not files:
        pattern = "train_data_batch_*.npz" if train else "val_data.npz"
        raise not_found("imagenet64", root, f"no {pattern} files")
    return NpzImageDataset(files, 64)


class ImageFolderDataset(Dataset):
    """Image files, each center-cropped to a square and resized to ``[3, size, size]``; no labels.

    Files whose header cannot be read are dropped at construction with one warning, and so are files
    that fail to decode before the first one that does (which is decoded to check, so that a folder
    where no image decodes is a :class:`~fastflow.errors.DataError` before anything is written). A file
    that fails to decode later (e.g. truncated) is replaced by the next readable file with a warning.
    """

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.size = size
        self.files, bad = [], []
        for path in files:
            try:
                with Image.open(path):
                    pass
                self.files.append(path)
            except (UnidentifiedImageError, OSError):
                bad.append(path)
        while self.files and not self._decodes(self.files[0]):
            bad.append(self.files.pop(0))
        if bad:
            shown = ", ".join(str(p) for p in bad[:5]) + (" ..." if len(bad) > 5 else "")
            warnings.warn(f"skipped {len(bad)} unreadable image file(s): {shown}", stacklevel=2)

    def _decodes(self, path: Path) -> bool:
        try:
            with Image.open(path) as image:
                image.load()
            return True
        except (UnidentifiedImageError, OSError):
            return False

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                with Image.open(path) as image:
                    return square_resize(image, self.size), -1
            except (UnidentifiedImageError, OSError) as err:
                warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)
        raise DataError(f"none of the {len(self.files)} image files could be decoded (first: {self.files[0]})")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_folder(dataset: str, root: Path, train: bool, size: int) -> ImageFolderDataset:
    """LSUN / CelebA-HQ split from a folder of images (see the module docstring for the layout)."""
    if not root.is_dir():
        raise not_found(dataset, root, "no such folder")
    valid_dirs = [root / name for name in VALID_FOLDERS if (root / name).is_dir()]
    if (root / "train").is_dir() and valid_dirs:
        files = _image_files(root / "train" if train else valid_dirs[0])
    else:
        files = _image_files(root)
        held_out = min(MAX_HELD_OUT, len(files) // HELD_OUT_DIVISOR)
        files = files[: len(files) - held_out] if train else files[len(files) - held_out :]
    split = ImageFolderDataset(files, size)
    if files and len(split) == 0:
        raise DataError(
            f"{dataset}: none of the {len(files)} {'training' if train else 'validation'} image files under "
            f"{root.resolve()} could be decoded (e.g. {files[0]}); replace them, or point --data at another folder"
        )
    if len(split) == 0:
        raise not_found(
            dataset, root, f"no readable {'training' if train else 'validation'} images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return split


class Augmented(Dataset):
    """A data set whose images pass through a random augmentation drawn from (seed, epoch, index).

    Because the randomness of item ``i`` depends only on those three numbers, the augmented data
    are the same whatever the worker count, the rank or the point a run was resumed from.
    """

    def __init__(
        self, base: Dataset, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor], seed: int
    ) -> None:
        self.base, self.augment, self.seed, self.epoch = base, augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, index))
        return self.augment(image, generator), label
