"""The coupling network's convolutions as GEMMs over channels-last rows: the building blocks of the
torch backend's CPU formulation (:mod:`fastflow.ops.coupling_net_rows` runs the whole network).

A channels-last ``[B, C, H, W]`` tensor is, in memory, the rows ``[B*H*W, C]``, so a convolution
with stride 1 is one matrix product over those rows plus a cheap rearrangement on its thin side:

- few input channels (the coupling net's first 3x3 conv, 6 -> 512): the input's :func:`patches`
  ``[B*H*W, C_in*k*k]`` (small) times the kernel, written by :func:`product_to_channels_last`
  into a channels-last result, so the next op reads rows without a copy;
- a 1x1 convolution (the 512 -> 512 ``conv_mid``): one ``mm`` on the rows, channels-last in and
  out (:func:`conv1x1_rows` is it as an op of its own);
- few output channels (the last 3x3 conv, 512 -> 12): the rows times the flipped kernel arranged as
  ``[C_out*k*k, C_in]`` give every output channel's contribution at every kernel offset;
  :func:`sum_patches` (col2im) adds them up at their shifted positions, giving a contiguous NCHW
  result. This is the transposed-convolution identity ``conv(h, W) = fold(rows(h) @ flip(W)^T)``
  for "same" padding (:func:`same_padding`).

The patches (im2col) and their adjoint (col2im) are the extension's ``im2col_rows`` and
``col2im_rows`` (``csrc/patch_rows.cpp``: one parallel pass straight to and from rows, 1.4-4.5x
``F.unfold``/``F.fold`` plus the transposing copy at these shapes), else ``F.unfold``/``F.fold``.

Why: on the 2-core AMD EPYC (AVX2) these shapes run ``conv2d`` (oneDNN, NCHW) at 30-90 GFLOP/s
(forward + backward), against 80-140 GFLOP/s for the same products as ``mm`` (benchmarks/RESULTS.md,
"The coupling network as row GEMMs"). The GPU keeps ``conv2d`` (cuDNN), and ``backend="reference"``
keeps the paper's ``conv2d``.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from fastflow.ops import _extension
from fastflow.ops._backend import resolve_backend


def use_rows(backend: str, x: torch.Tensor) -> bool:
    """Whether the coupling network runs as row GEMMs: the torch backend on a CPU tensor."""
    return x.device.type == "cpu" and resolve_backend(backend, x) == "torch"


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x [B, C, H, W]`` is stored channels-last (rows ``[B*H*W, C]``) and not also NCHW."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def to_rows(x: torch.Tensor) -> torch.Tensor:
    """``x [B, C, H, W]`` as rows ``[B*H*W, C]`` (a view when x is channels-last, else a copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _from_rows(rows: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Rows ``[B*H*W, C]`` as the channels-last ``[B, C, H, W]`` they are (a view)."""
    return rows.view(batch, height, width, rows.shape[1]).permute(0, 3, 1, 2)


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


_PATCH_FAKES = {"im2col_rows": _fake_im2col, "col2im_rows": _fake_col2im}


def _patch_kernels_loaded() -> bool:
    """Whether the extension's ``im2col_rows``/``col2im_rows`` CPU kernels are loaded."""
    return _extension.cpu_kernels_loaded(_PATCH_FAKES)


def _use_patch_kernels(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and _patch_kernels_loaded()


def patches(x: torch.Tensor, kernel: int, padding: int) -> torch.Tensor:
    """x ``[B, C, H, W]``'s ``kernel x kernel`` patches as rows ``[B*H'*W', C*k*k]``, columns ordered
    (c, i, j): the extension's ``im2col_rows`` in one parallel pass, else ``F.unfold`` and a copy."""
    if _use_patch_kernels(x):
        return torch.ops.fastflow.im2col_rows(x, kernel, padding)
    return F.unfold(x, kernel, padding=padding).transpose(1, 2).reshape(-1, x.shape[1] * kernel * kernel)


def sum_patches(rows: torch.Tensor, batch: int, size: tuple[int, int], kernel: int, padding: int) -> torch.Tensor:
    """The adjoint of :func:`patches`: rows ``[B*H'*W', C*k*k]`` summed into a contiguous
    ``[B, C, H, W]`` (``size`` = (H, W)): the extension's ``col2im_rows``, else ``F.fold``."""
    if _use_patch_kernels(rows):
        return torch.ops.fastflow.col2im_rows(rows.contiguous(), size[0], size[1], kernel, padding)
    return F.fold(rows.view(batch, -1, rows.shape[1]).transpose(1, 2), size, kernel, padding=padding)


class Conv1x1RowsFunction(torch.autograd.Function):
    """:func:`conv1x1_rows`'s forward and backward: one ``mm`` each way over the rows."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = h.shape
        ctx.save_for_backward(h, weight)
        return product_to_channels_last(to_rows(h), weight.t(), batch, height, width)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out: torch.Tensor):
        h, weight = ctx.saved_tensors
        grad = to_rows(grad_out)
        grad_h = grad_weight = None
        if ctx.needs_input_grad[0]:  # a plain product (no out=): backward may run under vmap
            grad_h = _from_rows(grad @ weight, *_image_dims(h))
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t() @ to_rows(h)
        return grad_h, grad_weight


def _image_dims(x: torch.Tensor) -> tuple[int, int, int]:
    return x.shape[0], x.shape[2], x.shape[3]


def conv1x1_rows(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``conv2d(h, weight[:, :, None, None])`` for h ``[B, C_in, H, W]`` (channels-last, else copied to
    rows) and weight ``[C_out, C_in]`` as one ``mm``; returns ``[B, C_out, H, W]`` channels-last."""
    return Conv1x1RowsFunction.apply(h, weight)
