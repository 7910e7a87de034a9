"""The coupling network's convolutions as GEMMs over channels-last rows: the CPU formulation of the
torch backend.

A channels-last ``[B, C, H, W]`` tensor is, in memory, the rows ``[B*H*W, C]``, so a convolution
with stride 1 is one matrix product over those rows plus a cheap rearrangement on its thin side:

- :func:`conv_im2col` (few input channels, e.g. the coupling net's first 3x3 conv, 6 -> 512): the
  input's patches ``[B*H*W, C_in*k*k]`` (small) times the kernel; the result is channels-last, so
  the next op reads rows without a copy.
- :func:`conv1x1_rows` (the 512 -> 512 ``conv_mid``): one ``mm`` on the rows, channels-last in
  and out.
- :func:`conv_col2im` (few output channels, e.g. the last 3x3 conv, 512 -> 12): the rows times the
  flipped kernel arranged as ``[C_out*k*k, C_in]`` give every output channel's contribution at every
  kernel offset; col2im adds them up at their shifted positions, giving a contiguous NCHW result.
  This is the transposed-convolution identity ``conv(h, W) = fold(rows(h) @ flip(W)^T)`` for
  "same" padding.

The patches (im2col) and their adjoint (col2im) are the extension's ``im2col_rows`` and
``col2im_rows`` (``csrc/patch_rows.cpp``: one parallel pass straight to and from rows, 1.4-4.5x
``F.unfold``/``F.fold`` plus the transposing copy at these shapes), else ``F.unfold``/``F.fold``.

Why: on the 2-core AMD EPYC (AVX2) these shapes run ``conv2d`` (oneDNN, NCHW) at 30-90 GFLOP/s
(forward + backward), against 80-140 GFLOP/s for the same products as ``mm`` (benchmarks/RESULTS.md,
"The coupling network as row GEMMs"). :func:`conv_im2col` and :func:`conv1x1_rows` write their
products straight into a channels-last tensor of their own (not a view), so that the ELU after them
may overwrite it (``cond_bias_elu(..., reuse_input=True)``), and have their own backwards for that
reason; :func:`conv_im2col` saves x rather than its patches (k*k times larger). Autograd
differentiates :func:`conv_col2im` through ``mm`` and :class:`Col2imRowsFunction` (col2im, whose
backward is im2col). The GPU keeps ``conv2d`` (cuDNN), and
``backend="reference"`` keeps the paper's ``conv2d``.
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


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x [B, C, H, W]`` as rows ``[B*H*W, C]`` (a view when x is channels-last, else a copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _from_rows(rows: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Rows ``[B*H*W, C]`` as the channels-last ``[B, C, H, W]`` they are (a view)."""
    return rows.view(batch, height, width, rows.shape[1]).permute(0, 3, 1, 2)


def _product_to_channels_last(
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
        torch.mm(a, b, out=_rows(out))
    else:
        torch.addmm(bias, a, b, out=_rows(out))
    return out


def _check_same(weight: torch.Tensor, padding: int) -> int:
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] != 2 * padding + 1:
        raise ValueError(
            f"conv_col2im expects a square odd kernel [C_out, C_in, k, k] with 'same' padding (k - 1) / 2, got weight "
            f"{tuple(weight.shape)} and padding {padding}"
        )
    return weight.shape[2]


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


def _use_patch_kernels(t: torch.Tensor, kernel: tuple[int, int]) -> bool:
    return t.device.type == "cpu" and kernel[0] == kernel[1] and _patch_kernels_loaded()


def _patches(x: torch.Tensor, kernel: tuple[int, int], padding: int) -> torch.Tensor:
    """x's patches as rows ``[B*H'*W', C_in*kh*kw]``, columns ordered (c, i, j): the extension's
    ``im2col_rows`` in one parallel pass, else ``F.unfold`` and a copy to rows."""
    if _use_patch_kernels(x, kernel):
        return torch.ops.fastflow.im2col_rows(x, kernel[0], padding)
    return F.unfold(x, kernel, padding=padding).transpose(1, 2).reshape(-1, x.shape[1] * kernel[0] * kernel[1])


def _sum_patches(
    rows: torch.Tensor, batch: int, size: tuple[int, int], kernel: tuple[int, int], padding: int
) -> torch.Tensor:
    """The adjoint of :func:`_patches`: rows ``[B*H'*W', C*kh*kw]`` summed into ``[B, C, H, W]``
    (``size`` = (H, W)): the extension's ``col2im_rows``, else ``F.fold``."""
    if _use_patch_kernels(rows, kernel):
        return torch.ops.fastflow.col2im_rows(rows.contiguous(), size[0], size[1], kernel[0], padding)
    return F.fold(rows.view(batch, -1, rows.shape[1]).transpose(1, 2), size, kernel, padding=padding)


class Col2imRowsFunction(torch.autograd.Function):
    """:func:`_sum_patches` with its adjoint, :func:`_patches`, as backward."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, batch: int, size: tuple[int, int], kernel: int, padding: int) -> torch.Tensor:
        ctx.geometry = ((kernel, kernel), padding)
        return _sum_patches(rows, batch, size, (kernel, kernel), padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        return _patches(grad_out, *ctx.geometry), None, None, None, None


class Im2colConvFunction(torch.autograd.Function):
    """:func:`conv_im2col`'s forward and backward. It saves x, not its patches (k*k times larger),
    and unfolds x again for the weight gradient; the input gradient is col2im of ``g @ W``."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        batch, _, height, width = x.shape
        c_out, _, kh, kw = weight.shape
        patches = _patches(x, (kh, kw), padding)
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        out_h, out_w = height + 2 * padding - kh + 1, width + 2 * padding - kw + 1
        return _product_to_channels_last(patches, weight.reshape(c_out, -1).t(), batch, out_h, out_w, bias)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")  # under the forward's autocast state (bfloat16 GEMMs alike)
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        c_out, _, kh, kw = weight.shape
        grad = _rows(grad_out)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_patches = grad @ weight.reshape(c_out, -1)
            grad_x = _sum_patches(grad_patches, x.shape[0], tuple(x.shape[2:]), (kh, kw), ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad.t() @ _patches(x, (kh, kw), ctx.padding)).view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias, None


def conv_im2col(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 0
) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding)`` (stride 1) for x ``[B, C_in, H, W]`` in any layout and
    weight ``[C_out, C_in, k, k]``, as patches times kernel; returns ``[B, C_out, H', W']`` channels-last."""
    return Im2colConvFunction.apply(x, weight, bias, padding)


class Conv1x1RowsFunction(torch.autograd.Function):
    """:func:`conv1x1_rows`'s forward and backward: one ``mm`` each way over the rows."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = h.shape
        ctx.save_for_backward(h, weight)
        return _product_to_channels_last(_rows(h), weight.t(), batch, height, width)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out: torch.Tensor):
        h, weight = ctx.saved_tensors
        grad = _rows(grad_out)
        grad_h = grad_weight = None
        if ctx.needs_input_grad[0]:  # a plain product (no out=): backward may run under vmap
            grad_h = _from_rows(grad @ weight, *_image_dims(h))
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t() @ _rows(h)
        return grad_h, grad_weight


def _image_dims(x: torch.Tensor) -> tuple[int, int, int]:
    return x.shape[0], x.shape[2], x.shape[3]


def conv1x1_rows(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``conv2d(h, weight[:, :, None, None])`` for h ``[B, C_in, H, W]`` (channels-last, else copied to
    rows) and weight ``[C_out, C_in]`` as one ``mm``; returns ``[B, C_out, H, W]`` channels-last."""
    return Conv1x1RowsFunction.apply(h, weight)


def conv_col2im(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 0
) -> torch.Tensor:
    """``conv2d(h, weight, bias, padding)`` with 'same' padding (``k = 2 * padding + 1``, stride 1) for
    h ``[B, C_in, H, W]`` (channels-last, else copied to rows) and weight ``[C_out, C_in, k, k]``, as
    rows times the flipped kernel then col2im; returns a contiguous ``[B, C_out, H, W]``."""
    k = _check_same(weight, padding)
    batch, c_in, height, width = h.shape
    c_out = weight.shape[0]
    flipped = weight.flip(2, 3).permute(0, 2, 3, 1).reshape(c_out * k * k, c_in)  # rows (c, i, j)
    out = Col2imRowsFunction.apply(_rows(h) @ flipped.t(), batch, (height, width), k, padding)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
