"""Triton kernels of ``out = elu(h + bias[b, c])``, the middle step of the coupling network.

h and out are viewed as ``[B, Hd, P]`` (P = pixels, 1 for vectors), bias is ``[B, Hd]`` (FC(z) per
sample and channel) or absent. Each program handles a ``[BLOCK_C, BLOCK_P]`` tile of one sample.

The backward needs only the output: ``elu'(t) = 1`` where ``out > 0`` and ``out + 1`` elsewhere, so
``dh = dout * elu'`` and ``dbias[b, c] = sum_p dh[b, c, p]``. Saving the output costs no memory in a
coupling net, where the next convolution keeps it anyway (the input h could then be freed). The
bias sum is deterministic: one partial per (sample, channel, pixel block), summed by torch.
Arithmetic is float32 (float64 for float64 inputs); results are stored in their input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastflow.kernels import _common

TILE = 1024  # elements per program


def _tiles(channels: int, pixels: int) -> tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)``: whole rows of pixels where they fit, then as many channels as fit."""
    block_p = _common.pow2_tile(pixels, 1, TILE)
    block_c = _common.pow2_tile(channels, 1, TILE // block_p)
    return block_c, block_p


@triton.jit
def _cond_bias_elu_forward_kernel(
    H,
    BIAS,
    OUT,
    HD,
    P,
    N_PBLOCKS,
    s_hb,
    s_hc,
    s_hp,
    s_bb,
    s_bc,
    HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """``OUT[b, c, p] = elu(H[b, c, p] + BIAS[b, c])``; OUT is contiguous ``[B, HD, P]``."""
    pid = tl.program_id(0)
    b = (pid // N_PBLOCKS).to(tl.int64)
    offs_p = (pid % N_PBLOCKS) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < HD
    mask = mask_c[:, None] & (offs_p < P)[None, :]
    t = tl.load(H + b * s_hb + offs_c[:, None] * s_hc + offs_p[None, :] * s_hp, mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        t += tl.load(BIAS + b * s_bb + offs_c * s_bc, mask=mask_c, other=0.0).to(ACC)[:, None]
    out = tl.where(t > 0, t, tl.exp(tl.minimum(t, 0.0)) - 1.0)
    tl.store(OUT + b * HD * P + offs_c[:, None] * P + offs_p[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _cond_bias_elu_backward_kernel(
    OUT,
    DOUT,
    DH,
    DBIAS_PART,
    HD,
    P,
    N_PBLOCKS,
    s_ob,
    s_oc,
    s_op,
    s_gb,
    s_gc,
    s_gp,
    HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """``DH = DOUT * elu'`` from the saved output; ``DBIAS_PART [B, HD, N_PBLOCKS]`` gets the tile's
    per-channel sums of DH. DH is contiguous ``[B, HD, P]``."""
    pid = tl.program_id(0)
    b = (pid // N_PBLOCKS).to(tl.int64)
    pblock = pid % N_PBLOCKS
    offs_p = pblock * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < HD
    mask = mask_c[:, None] & (offs_p < P)[None, :]
    out = tl.load(OUT + b * s_ob + offs_c[:, None] * s_oc + offs_p[None, :] * s_op, mask=mask, other=0.0).to(ACC)
    dout = tl.load(DOUT + b * s_gb + offs_c[:, None] * s_gc + offs_p[None, :] * s_gp, mask=mask, other=0.0).to(ACC)
    dh = tl.where(out > 0, dout, dout * (out + 1.0))
    tl.store(DH + b * HD * P + offs_c[:, None] * P + offs_p[None, :], dh.to(DH.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        tl.store(DBIAS_PART + (b * HD + offs_c) * N_PBLOCKS + pblock, tl.sum(dh, axis=1), mask=mask_c)


def _grid(batch: int, channels: int, pixels: int) -> tuple[int, int, int, tuple[int, int]]:
    block_c, block_p = _tiles(channels, pixels)
    n_pblocks = triton.cdiv(pixels, block_p)
    return block_c, block_p, n_pblocks, (batch * n_pblocks, triton.cdiv(channels, block_c))


def cond_bias_elu_forward(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``elu(h + bias[:, :, None])`` for h ``[B, Hd, P]`` and bias ``[B, Hd]`` or None (any strides);
    returns a contiguous ``[B, Hd, P]`` tensor in h's dtype."""
    batch, channels, pixels = h.shape
    out = _common.new_output((batch, channels, pixels), h.dtype, h.device)
    if out.numel() == 0:
        return out
    block_c, block_p, n_pblocks, grid = _grid(batch, channels, pixels)
    _cond_bias_elu_forward_kernel[grid](
        h,
        bias if bias is not None else h,
        out,
        channels,
        pixels,
        n_pblocks,
        *h.stride(),
        *(bias.stride() if bias is not None else (0, 0)),
        HAS_BIAS=bias is not None,
        ACC=_common.tl_dtype(_common.acc_dtype(h, bias)),
        BLOCK_C=block_c,
        BLOCK_P=block_p,
    )
    return out


def cond_bias_elu_backward(
    out: torch.Tensor, grad_out: torch.Tensor, bias_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients from the saved output ``out`` ``[B, Hd, P]`` and ``grad_out`` (any strides):
    ``(dh [B, Hd, P] in out's dtype, dbias [B, Hd] in bias_dtype, None when bias_dtype is None)``."""
    batch, channels, pixels = out.shape
    grad_h = _common.new_output((batch, channels, pixels), out.dtype, out.device)
    if grad_h.numel() == 0:
        grad_bias = None if bias_dtype is None else torch.zeros(batch, channels, dtype=bias_dtype, device=out.device)
        return grad_h, grad_bias
    block_c, block_p, n_pblocks, grid = _grid(batch, channels, pixels)
    acc = _common.acc_dtype(out.dtype, bias_dtype)
    partial = _common.new_output((batch, channels, n_pblocks), acc, out.device) if bias_dtype is not None else grad_h
    _cond_bias_elu_backward_kernel[grid](
        out,
        grad_out,
        grad_h,
        partial,
        channels,
        pixels,
        n_pblocks,
        *out.stride(),
        *grad_out.stride(),
        HAS_BIAS=bias_dtype is not None,
        ACC=_common.tl_dtype(acc),
        BLOCK_C=block_c,
        BLOCK_P=block_p,
    )
    return grad_h, None if bias_dtype is None else partial.sum(2).to(bias_dtype)
