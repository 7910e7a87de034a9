"""Image transforms on uint8 tensors ``[3, H, W]``: the paper's augmentations and the resizing of
folder images.

Augmentations (which data set uses which: :mod:`fastflow.data.registry`) take an explicit
``torch.Generator``, so that :class:`fastflow.data.Augmented` can make every random crop and flip a
function of (seed, epoch, index) and a resumed run sees the same images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip with probability 1/2: ``[C, H, W] -> [C, H, W]``."""
    if torch.rand((), generator=generator) < 0.5:
        return x.flip(-1)
    return x


def pad_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR-10 augmentation: reflect-pad by ``pad``, random crop back to ``[C, H, W]``, random flip."""
    _, h, w = x.shape
    padded = F.pad(x.unsqueeze(0).float(), (pad, pad, pad, pad), mode="reflect").squeeze(0).to(x.dtype)
    top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
    return random_flip(padded[:, top : top + h, left : left + w], generator)


def square_resize(image: Image.Image, size: int) -> torch.Tensor:
    """Center-crop the largest square of a PIL image and resize it to ``size``: uint8 ``[3, size, size]``.

    For LSUN (shorter side 256) this is the paper's center-crop 256 then resize to 128; for CelebA-HQ
    (square) it is a plain resize.
    """
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC if side < size else Image.Resampling.LANCZOS)
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).contiguous()
