"""Triton kernels of weight normalisation, ``w = g * v / max(||v_o||, EPS)`` per output unit o.

v and w are viewed as ``[O, K]`` (K: every other dimension of the weight, flattened), g is ``[O]``;
EPS is the launcher's ``eps``. One program per row o loops over the row in blocks of BLOCK elements
(each thread at least 16 bytes of a block, so a row whose length is a multiple of 16 moves 128 bits
at a time), sums in float32 (float64 for float64 inputs) and stores in the input dtype; nothing is
shared between programs (no atomics).

Backward, with ``n = max(||v_o||, EPS)`` and ``dot = sum_k dw[o, k] v[o, k]``:
``dg[o] = dot / n`` and ``dv[o] = (g / n) (dw[o] - c v[o])`` with ``c = dg[o] / n`` where the norm
is at least EPS and ``c = 0`` where it is clamped (the clamp passes no gradient to the norm). One
kernel computes both: a first loop over the row sums ``v^2`` and ``dw v``, a second writes dv.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastflow.kernels import _common

TILE = 1024  # elements of a row per loop iteration


@triton.jit
def _weight_norm_forward_kernel(V, G, W, K, s_vo, s_vk, s_g, EPS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """``W[o, :] = G[o] * V[o, :] / max(||V[o, :]||, EPS)``; W is contiguous ``[O, K]``."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    v_row = V + row * s_vo
    squares = tl.zeros([BLOCK], ACC)
    for start in range(0, K, BLOCK):
        k = start + offs
        v = tl.load(v_row + k * s_vk, mask=k < K, other=0.0).to(ACC)
        squares += v * v
    norm = tl.sqrt(tl.sum(squares, axis=0))
    scale = tl.load(G + row * s_g).to(ACC) / tl.maximum(norm, tl.full([], EPS, ACC))
    for start in range(0, K, BLOCK):
        k = start + offs
        mask = k < K
        v = tl.load(v_row + k * s_vk, mask=mask, other=0.0).to(ACC)
        tl.store(W + row * K + k, (v * scale).to(W.dtype.element_ty), mask=mask)


@triton.jit
def _weight_norm_backward_kernel(
    V,
    G,
    DW,
    DV,
    DG,
    K,
    s_vo,
    s_vk,
    s_g,
    s_dwo,
    s_dwk,
    EPS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``DG[o]`` and ``DV[o, :]`` (contiguous ``[O, K]``) from ``DW``, the gradient of W."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    v_row = V + row * s_vo
    dw_row = DW + row * s_dwo
    squares = tl.zeros([BLOCK], ACC)
    dots = tl.zeros([BLOCK], ACC)
    for start in range(0, K, BLOCK):
        k = start + offs
        mask = k < K
        v = tl.load(v_row + k * s_vk, mask=mask, other=0.0).to(ACC)
        dw = tl.load(dw_row + k * s_dwk, mask=mask, other=0.0).to(ACC)
        squares += v * v
        dots += dw * v
    norm = tl.sqrt(tl.sum(squares, axis=0))
    eps = tl.full([], EPS, ACC)  # a bare float constant would be float32
    n = tl.maximum(norm, eps)
    dg = tl.sum(dots, axis=0) / n
    tl.store(DG + row, dg.to(DG.dtype.element_ty))
    scale = tl.load(G + row * s_g).to(ACC) / n
    c = tl.where(norm >= eps, dg / n, 0.0)
    for start in range(0, K, BLOCK):
        k = start + offs
        mask = k < K
        v = tl.load(v_row + k * s_vk, mask=mask, other=0.0).to(ACC)
        dw = tl.load(dw_row + k * s_dwk, mask=mask, other=0.0).to(ACC)
        tl.store(DV + row * K + k, (scale * (dw - c * v)).to(DV.dtype.element_ty), mask=mask)


def _launch_options(k: int, dtype: torch.dtype) -> dict[str, int]:
    """``BLOCK`` covering the row (at most TILE) and ``num_warps`` (at most 4) that give each thread
    at least 16 bytes of v per block, so that whole rows move 128 bits at a time."""
    per_thread = 16 // dtype.itemsize
    block = _common.pow2_tile(k, 32 * per_thread, TILE)
    return {"BLOCK": block, "num_warps": min(4, block // (32 * per_thread))}


def weight_norm_forward(v: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """``g[:, None] * v / max(||v_o||, eps)`` for v ``[O, K]`` and g ``[O]`` (any strides); returns a
    contiguous ``[O, K]`` tensor in v's dtype."""
    rows, k = v.shape
    w = _common.new_output((rows, k), v.dtype, v.device)
    if rows == 0:
        return w
    _weight_norm_forward_kernel[(rows,)](
        v,
        g,
        w,
        k,
        *v.stride(),
        g.stride(0),
        EPS=eps,
        ACC=_common.tl_dtype(_common.acc_dtype(v, g)),
        **_launch_options(k, v.dtype),
    )
    return w


def weight_norm_backward(
    v: torch.Tensor, g: torch.Tensor, grad_w: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dv [O, K] in v's dtype, dg [O] in g's dtype)``, contiguous, from v ``[O, K]``, g ``[O]`` and
    the gradient of w ``[O, K]`` (any strides), for the clamp ``eps``."""
    rows, k = v.shape
    grad_v = _common.new_output((rows, k), v.dtype, v.device)
    grad_g = _common.new_output((rows,), g.dtype, g.device)
    if rows == 0:
        return grad_v, grad_g
    _weight_norm_backward_kernel[(rows,)](
        v,
        g,
        grad_w,
        grad_v,
        grad_g,
        k,
        *v.stride(),
        g.stride(0),
        *grad_w.stride(),
        EPS=eps,
        ACC=_common.tl_dtype(_common.acc_dtype(v, g, grad_w)),
        **_launch_options(k, v.dtype),
    )
    return grad_v, grad_g
