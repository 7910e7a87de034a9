"""Triton kernels of ActNorm + invertible 1x1 convolution, folded into one per-pixel affine map.

With x viewed as ``[B, C_in, P]`` (P = H*W pixels), both directions are the per-sample GEMM

    y[b] = M @ x[b] + c          (M ``[C_out, C_in]``, c ``[C_out]``)

density direction (x -> y): ``M = W diag(exp(log_scale))``, ``c = W bias``;
generation direction (y -> x): ``M = diag(exp(-log_scale)) W^-1``, ``c = -bias * exp(-log_scale)``.
The wrapper builds M and c with tiny C x C torch ops; the kernels never see the actnorm output.

Backward of ``y = M x + c``: ``dx[b] = M^T dy[b]`` (the same GEMM kernel with M^T and no bias),
``dM = G = sum_b dy[b] x[b]^T`` and ``dc = r = sum_{b,p} dy[b, :, p]`` (one reduction kernel).

- ``pixel_affine``: tiles (sample, pixel block) x (output-channel block) and loops over input
  channels with ``tl.dot``; channel counts of any size (masked), float32 accumulation. It computes
  ``y^T = x^T M^T`` per tile, so that the pixel-major x tile is the dot's first operand (see
  ``_common.computed_operand``).
- ``outer_sum``: tiles G over (output block, input block) and splits the (sample, pixel block) items
  into chunks, one chunk per program; each chunk writes its own partial G and r, which torch sums
  (deterministic, no atomics).

float16/bfloat16 inputs are converted to float32 before the dot; float64 inputs use float64 dots.
float32 dots are IEEE unless ``torch.get_float32_matmul_precision()`` is "high"/"medium" (an explicit
opt-in to TF32): the flow's main path must stay invertible to float32 accuracy, so unlike the
coupling network's 1x1 convolutions it does not follow cuDNN's TF32 default (``_common.flow_dot_precision``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastflow.kernels import _common

# Largest tiles (BLOCK_O, BLOCK_K, BLOCK_P) over output channels, input channels and pixels.
PIXEL_AFFINE_TILES = (64, 32, 64)
OUTER_SUM_TILES = (64, 64, 64)


@triton.jit
def _pixel_affine_kernel(
    X,
    M,
    BIAS,
    Y,
    C_IN,
    C_OUT,
    P,
    N_PBLOCKS,
    N_OBLOCKS,
    s_xb,
    s_xc,
    s_xp,
    s_mo,
    s_mk,
    s_yb,
    s_yc,
    s_yp,
    HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """``Y[b, o, p] = sum_k M[o, k] X[b, k, p] + BIAS[o]`` for one (sample, pixel block, out block), the
    out block fastest over programs (those reading one x tile run together)."""
    pid = tl.program_id(0)
    item = pid // N_OBLOCKS
    b = (item // N_PBLOCKS).to(tl.int64)
    offs_p = (item % N_PBLOCKS) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_o = (pid % N_OBLOCKS) * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_p = offs_p < P
    mask_o = offs_o < C_OUT
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=ACC)  # y^T = x^T M^T: x^T is the dot's first operand
    for k0 in range(0, C_IN, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < C_IN
        mask_m = mask_o[:, None] & mask_k[None, :]
        m = tl.load(M + offs_o[:, None] * s_mo + offs_k[None, :] * s_mk, mask=mask_m, other=0.0)
        m = _common.computed_operand(m.to(ACC), mask_m, True)  # M^T (the backward's) is O-major
        mask_x = mask_k[:, None] & mask_p[None, :]
        x = tl.load(X + b * s_xb + offs_k[:, None] * s_xc + offs_p[None, :] * s_xp, mask=mask_x, other=0.0)
        x = _common.computed_operand(x.to(ACC), mask_x, True)
        acc = tl.dot(tl.trans(x), tl.trans(m), acc, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_o, mask=mask_o, other=0.0).to(ACC)[None, :]
    tl.store(
        Y + b * s_yb + offs_o[None, :] * s_yc + offs_p[:, None] * s_yp,
        acc.to(Y.dtype.element_ty),
        mask=mask_p[:, None] & mask_o[None, :],
    )


@triton.jit
def _outer_sum_kernel(
    DY,
    X,
    G_PART,
    R_PART,
    C_OUT,
    C_IN,
    P,
    N_PBLOCKS,
    N_ITEMS,
    ITEMS_PER_SPLIT,
    s_db,
    s_dc,
    s_dp,
    s_xb,
    s_xc,
    s_xp,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Partial ``G[o, k] = sum dy[b, o, p] x[b, k, p]`` and ``r[o] = sum dy[b, o, p]`` over one chunk
    of (sample, pixel block) items; ``G_PART [S, C_OUT, C_IN]``, ``R_PART [S, C_OUT]``."""
    split = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_o = offs_o < C_OUT
    mask_k = offs_k < C_IN
    acc = tl.zeros((BLOCK_O, BLOCK_K), dtype=ACC)
    r = tl.zeros((BLOCK_O,), dtype=ACC)
    first = split * ITEMS_PER_SPLIT
    last = tl.minimum(first + ITEMS_PER_SPLIT, N_ITEMS)
    for item in range(first, last):
        b = (item // N_PBLOCKS).to(tl.int64)
        offs_p = (item % N_PBLOCKS) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        dy = tl.load(
            DY + b * s_db + offs_o[:, None] * s_dc + offs_p[None, :] * s_dp,
            mask=mask_o[:, None] & mask_p[None, :],
            other=0.0,
        ).to(ACC)
        x = tl.load(
            X + b * s_xb + offs_k[None, :] * s_xc + offs_p[:, None] * s_xp,
            mask=mask_p[:, None] & mask_k[None, :],
            other=0.0,
        ).to(ACC)
        acc = tl.dot(dy, x, acc, input_precision=PRECISION, out_dtype=ACC)
        r += tl.sum(dy, axis=1)
    g_ptrs = G_PART + split.to(tl.int64) * C_OUT * C_IN + offs_o[:, None] * C_IN + offs_k[None, :]
    tl.store(g_ptrs, acc, mask=mask_o[:, None] & mask_k[None, :])
    tl.store(R_PART + split.to(tl.int64) * C_OUT + offs_o, r, mask=mask_o & (pid_k == 0))


def pixel_affine(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y[b] = matrix @ x[b] + bias[:, None]`` on ``[B, C_in, P]`` (any strides).

    matrix ``[C_out, C_in]`` (any strides), bias ``[C_out]`` or None; returns a contiguous
    ``[B, C_out, P]`` tensor in x's dtype.
    """
    batch, c_in, pixels = x.shape
    c_out = matrix.shape[0]
    y = _common.new_output((batch, c_out, pixels), x.dtype, x.device)
    if y.numel() == 0:
        return y
    acc = _common.acc_dtype(x, matrix)
    precision = _common.flow_dot_precision(acc)
    cap_o, cap_k, cap_p = PIXEL_AFFINE_TILES
    caps = (cap_o, _common.reduction_cap(cap_k, acc, precision), cap_p)
    block_o, block_k, block_p = _common.dot_tiles((c_out, c_in, pixels), caps)
    n_pblocks, n_oblocks = triton.cdiv(pixels, block_p), triton.cdiv(c_out, block_o)
    _pixel_affine_kernel[(batch * n_pblocks * n_oblocks,)](
        x,
        matrix,
        bias if bias is not None else matrix,
        y,
        c_in,
        c_out,
        pixels,
        n_pblocks,
        n_oblocks,
        *x.stride(),
        *matrix.stride(),
        *y.stride(),
        HAS_BIAS=bias is not None,
        ACC=_common.tl_dtype(acc),
        PRECISION=precision,
        BLOCK_O=block_o,
        BLOCK_K=block_k,
        BLOCK_P=block_p,
        **_common.gemm_options(acc),
    )
    return y


def outer_sum(dy: torch.Tensor, x: torch.Tensor, splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``G = sum_b dy[b] @ x[b]^T`` ``[C_out, C_in]`` and ``r = dy.sum((0, 2))`` ``[C_out]``.

    dy ``[B, C_out, P]``, x ``[B, C_in, P]`` (any strides); both results in float32 (float64 for
    float64 input). ``splits`` overrides the number of reduction chunks.
    """
    batch, c_out, pixels = dy.shape
    c_in = x.shape[1]
    acc = _common.acc_dtype(dy, x)
    if batch * pixels == 0:
        return (torch.zeros(c_out, c_in, dtype=acc, device=x.device), torch.zeros(c_out, dtype=acc, device=x.device))
    precision = _common.flow_dot_precision(acc)
    caps = (*OUTER_SUM_TILES[:2], _common.reduction_cap(OUTER_SUM_TILES[2], acc, precision))
    block_o, block_k, block_p = _common.dot_tiles((c_out, c_in, pixels), caps)
    n_pblocks = triton.cdiv(pixels, block_p)
    items = batch * n_pblocks
    tiles = (triton.cdiv(c_out, block_o), triton.cdiv(c_in, block_k))
    max_splits = (dy.numel() + x.numel()) // (c_out * c_in + c_out)  # partials no larger than the input
    splits, per_split = _common.reduction_chunks(items, tiles[0] * tiles[1], splits, max_splits)
    g_part = _common.new_output((splits, c_out, c_in), acc, x.device)
    r_part = _common.new_output((splits, c_out), acc, x.device)
    _outer_sum_kernel[(splits, *tiles)](
        dy,
        x,
        g_part,
        r_part,
        c_out,
        c_in,
        pixels,
        n_pblocks,
        items,
        per_split,
        *dy.stride(),
        *x.stride(),
        ACC=_common.tl_dtype(acc),
        PRECISION=precision,
        BLOCK_O=block_o,
        BLOCK_K=block_k,
        BLOCK_P=block_p,
        **_common.gemm_options(acc),
    )
    return g_part.sum(0), r_part.sum(0)
