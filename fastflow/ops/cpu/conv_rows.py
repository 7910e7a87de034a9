"""The building blocks of the coupling network as GEMMs over channels-last rows
(:mod:`fastflow.ops.cpu.coupling_net`).

A channels-last ``[B, C, H, W]`` tensor is, in memory, the rows ``[B*H*W, C]``, so a convolution
with stride 1 is one matrix product over those rows plus a cheap rearrangement on its thin side:

- few input channels (the coupling net's first 3x3 conv): the input's :func:`patches`
  ``[B*H*W, C_in*k*k]`` (small) times the kernel, written by :func:`product_to_channels_last`
  into a channels-last result, so the next op reads rows without a copy;
- a 1x1 convolution (``conv_mid``): one product on the rows, channels-last in and out;
- few output channels (the last 3x3 conv): the rows times the flipped kernel arranged as
  ``[C_out*k*k, C_in]`` give every output channel's contribution at every kernel offset;
  :func:`sum_patches` (col2im) adds them up at their shifted positions, giving a contiguous NCHW
  result. This is the transposed-convolution identity ``conv(h, W) = fold(rows(h) @ flip(W)^T)``
  for "same" padding (:func:`same_padding`).

The patches (im2col) and their adjoint (col2im) are the extension's ``im2col_rows`` and
``col2im_rows`` (``csrc/patch_rows.cpp``: one parallel pass straight to and from rows), else
``F.unfold``/``F.fold``. Why rows at all: ``benchmarks/RESULTS.md`` (``cpu_ab --switch coupling_net``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fastflow.ops import _extension
from fastflow.ops.cpu.storage import to_rows


def product_to_channels_last(
    a: torch.Tensor, b: torch.Tensor, batch: int, height: int, width: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``a @ b (+ bias)`` for rows a ``[B*H*W, K]`` and b ``[K, C]``, written straight into a new
    channels-last ``[B, C, H, W]`` (a tensor of its own, not a view, so the next op may overwrite it).
    Under CPU autocast the operands are cast to its dtype first, as autocast casts a plain ``mm``."""
    if a.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        a, b, bias = a.to(dtype), b.to(dtype), None if bias is None else bias.to(dtype)
    out = torch.empty(
        (batch, b.shape[1], height, width), dtype=a.dtype, device=a.device, memory_format=torch.channels_last
    )
    if bias is None:
        torch.mm(a, b, out=to_rows(out))
    else:
        torch.addmm(bias, a, b, out=to_rows(out))
    return out


def same_padding(weight: torch.Tensor) -> int:
    """The 'same' padding ``(k - 1) / 2`` of a square odd kernel ``[C_out, C_in, k, k]``, the only
    kind :func:`sum_patches` can apply as a convolution (col2im of rows times the flipped kernel)."""
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 != 1:
        raise ValueError(
            f"the col2im convolution expects a square odd kernel [C_out, C_in, k, k] ('same' padding), got "
            f"{tuple(weight.shape)}"
        )
    return weight.shape[2] // 2


def _fake_im2col(x: torch.Tensor, kernel: int, padding: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    out_h, out_w = height + 2 * padding - kernel + 1, width + 2 * padding - kernel + 1
    return x.new_empty(batch * out_h * out_w, channels * kernel * kernel)


def _fake_col2im(rows: torch.Tensor, height: int, width: int, kernel: int, padding: int) -> torch.Tensor:
    out_h, out_w = height + 2 * padding - kernel + 1, width + 2 * padding - kernel + 1
    return rows.new_empty(rows.shape[0] // (out_h * out_w), rows.shape[1] // kernel**2, height, width)


FAKES = {"im2col_rows": _fake_im2col, "col2im_rows": _fake_col2im}


def kernels_loaded() -> bool:
    """Whether the extension's ``im2col_rows``/``col2im_rows`` CPU kernels are loaded."""
    return _extension.cpu_kernels_loaded(FAKES)


def _use_kernels(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and kernels_loaded()


def patches(x: torch.Tensor, kernel: int, padding: int) -> torch.Tensor:
    """x ``[B, C, H, W]``'s ``kernel x kernel`` patches as rows ``[B*H'*W', C*k*k]``, columns ordered
    (c, i, j): the extension's ``im2col_rows`` in one parallel pass, else ``F.unfold`` and a copy."""
    if _use_kernels(x):
        return torch.ops.fastflow.im2col_rows(x, kernel, padding)
    return F.unfold(x, kernel, padding=padding).transpose(1, 2).reshape(-1, x.shape[1] * kernel * kernel)


def sum_patches(rows: torch.Tensor, batch: int, size: tuple[int, int], kernel: int, padding: int) -> torch.Tensor:
    """The adjoint of :func:`patches`: rows ``[B*H'*W', C*k*k]`` summed into a contiguous
    ``[B, C, H, W]`` (``size`` = (H, W)): the extension's ``col2im_rows``, else ``F.fold``."""
    if _use_kernels(rows):
        return torch.ops.fastflow.col2im_rows(rows.contiguous(), size[0], size[1], kernel, padding)
    return F.fold(rows.view(batch, -1, rows.shape[1]).transpose(1, 2), size, kernel, padding=padding)
