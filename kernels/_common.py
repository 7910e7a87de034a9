"""Helpers shared by the kernel launchers: output buffers, accumulation dtypes and tile sizes."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a launcher hands to a kernel comes from here (tests poison it with NaN, so call
    it as ``_common.new_output``)."""
    return torch.empty(shape, dtype=dtype, device=device)


def acc_dtype(*inputs: torch.Tensor | torch.dtype | None) -> torch.dtype:
    """The accumulation (and logdet / partial-sum) dtype of a launch: float64 when any input (a tensor
    or a dtype) is float64, else float32. ``None`` entries (absent optional tensors) are ignored."""
    kinds = {x.dtype if isinstance(x, torch.Tensor) else x for x in inputs}
    return torch.float64 if torch.float64 in kinds else torch.float32


def tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """The Triton dtype of a float32 or float64 accumulation dtype."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def pow2_tile(n: int, low: int, cap: int) -> int:
    """The power of two covering ``n``, clamped to ``[low, cap]``."""
    return max(low, min(cap, triton.next_power_of_2(n)))
