"""The PNG baseline: bits/dim of images stored losslessly as PNG at maximum compression."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


def png_bits_per_dim(dataset: Dataset, limit: int = 0) -> float:
    """Mean over images of 8 * (PNG bytes) / (3 H W), each image saved alone with PIL at
    ``compress_level=9, optimize=True`` (header and chunk overheads included, as a file would be)."""
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    if count == 0:
        raise ValueError("cannot compute the PNG baseline of an empty data set")
    total = 0.0
    for i in range(count):
        image = dataset[i][0]
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(
            buffer, format="PNG", optimize=True, compress_level=9
        )
        total += 8 * buffer.tell() / image.numel()
    return total / count
