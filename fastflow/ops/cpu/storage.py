"""How a ``[B, C, P]`` (or ``[B, C, H, W]``) tensor is stored on the CPU: as planes (NCHW, contiguous)
or as rows (channels-last: the memory of a contiguous ``[B, P, C]``), which the C++ kernels keep."""

from __future__ import annotations

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x [B, C, H, W]`` is stored channels-last (rows ``[B*H*W, C]``) and not also NCHW."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def stored_as_rows(t: torch.Tensor) -> bool:
    """Whether ``t [B, C, P]`` is stored as rows (the memory of a contiguous ``[B, P, C]``, as a
    channels_last ``[B, C, H, W]`` viewed as ``[B, C, H*W]`` is) rather than as planes."""
    return not t.is_contiguous() and t.transpose(1, 2).is_contiguous()


def stored_like(t: torch.Tensor, layout_of: torch.Tensor) -> torch.Tensor:
    """``t [B, C, P]`` stored as ``layout_of`` is (rows or planes), copied only when it is not."""
    if stored_as_rows(layout_of):
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    return t.contiguous()


def stored_alike(t: torch.Tensor, layout_of: torch.Tensor) -> bool:
    """Whether ``t [B, C, P]`` is stored as ``layout_of`` is (both planes or both rows), densely."""
    dense = t.is_contiguous() or t.transpose(1, 2).is_contiguous()
    return dense and stored_as_rows(t) == stored_as_rows(layout_of)


def planes_or_rows(h: torch.Tensor) -> bool:
    """Whether an in-place kernel can write over ``h``: stored as planes or as channels-last rows."""
    return h.is_contiguous() or is_channels_last(h)


def to_rows(x: torch.Tensor) -> torch.Tensor:
    """``x [B, C, H, W]`` as rows ``[B*H*W, C]`` (a view when x is channels-last, else a copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
