"""Triton kernels of ``out = elu(W h + bias[b])``: the coupling network's middle, a 1x1 convolution
(per-pixel ``C_out x C_in`` GEMM) with the FC(z) bias and the ELU in its epilogue.

h is viewed as ``[B, C_in, P]`` (P = H*W pixels), W ``[C_out, C_in]``, bias ``[B, C_out]`` (one
value per sample and channel) or absent; out is ``[B, C_out, P]``.

- forward (:func:`conv1x1_bias_elu_forward`): tiles (sample, pixel block) x (output-channel block),
  the channel block fastest over programs (programs sharing an h tile run together, for L2 reuse),
  loops over input channels with ``tl.dot`` and applies bias and ELU to the accumulator before the
  one store: the pre-activation never reaches memory. It computes ``out^T = h^T W^T`` per tile, so
  that the pixel-major h tile is the dot's first operand (see ``_common.computed_operand``).
- backward: ``g = dout * elu'`` with ``elu' = 1`` where ``out > 0`` and ``out + 1`` elsewhere (from
  the saved output, so the pre-activation is never needed). g is never materialised either:
  :func:`grad_input` computes ``dh[b] = W^T g[b]`` with g formed tile by tile in the GEMM's
  prologue, and its programs of the first input-channel block also write the per-(sample, pixel
  block) partial sums of g that give ``dbias[b, o] = sum_p g[b, o, p]``; :func:`grad_weight`
  computes ``dW = sum_b g[b] h[b]^T`` with the same prologue, its (sample, pixel block) items split
  into chunks whose partials torch sums (deterministic, no atomics).

Arithmetic: float32 accumulation (float64 for float64 inputs). float16/bfloat16 h goes into
``tl.dot`` as is, with W converted to h's dtype by the caller (tensor cores), float32 accumulation;
results are stored in h's dtype. float32 dots follow the setting torch applies to the convolution
they replace (``torch.backends.cudnn.conv.fp32_precision``; TF32 by default, IEEE when set to "ieee"
or with ``torch.backends.cudnn.allow_tf32 = False``), see ``_common.conv_dot_precision``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastflow.kernels import _common

# tile caps (power-of-two tiles, at least _common.MIN_DOT): forward (O, K, P), input gradient (K, O, P),
# weight gradient (O, K, P)
FORWARD_TILES = (64, 32, 64)
GRAD_INPUT_TILES = (64, 32, 64)
F32_GRAD_INPUT_TILES = (64, 16, 64)  # float32 operands: W^T goes through registers, fewer with a narrower O tile
GRAD_WEIGHT_TILES = (64, 64, 64)


def _operands(h: torch.Tensor, acc: torch.dtype) -> torch.dtype:
    """The torch dtype of the ``tl.dot`` operands (see :func:`_dot_dtype`)."""
    return h.dtype if h.dtype in (torch.float16, torch.bfloat16) else acc


def _dot_dtype(h: torch.Tensor, acc: torch.dtype) -> tl.dtype:
    """The operand dtype of ``tl.dot``: h's own for float16/bfloat16, the accumulator's otherwise."""
    if h.dtype in (torch.float16, torch.bfloat16):
        return tl.bfloat16 if h.dtype == torch.bfloat16 else tl.float16
    return _common.tl_dtype(acc)


@triton.jit
def _elu_grad(out, dout):
    """``dout * elu'(t)`` from the ELU's output ``out = elu(t)``."""
    return tl.where(out > 0, dout, dout * (out + 1.0))


@triton.jit
def _forward_kernel(
    H,
    W,
    BIAS,
    OUT,
    C_IN,
    C_OUT,
    P,
    N_PBLOCKS,
    N_OBLOCKS,
    s_hb,
    s_hc,
    s_hp,
    s_wo,
    s_wk,
    s_bb,
    s_bo,
    HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """``OUT[b, o, p] = elu(sum_k W[o, k] H[b, k, p] + BIAS[b, o])``; OUT contiguous ``[B, C_OUT, P]``.
    The output-channel block varies fastest over programs, so those reading one h tile run together."""
    pid = tl.program_id(0)
    item = pid // N_OBLOCKS
    b = (item // N_PBLOCKS).to(tl.int64)
    offs_p = (item % N_PBLOCKS) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_o = (pid % N_OBLOCKS) * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_p = offs_p < P
    mask_o = offs_o < C_OUT
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=ACC)  # out^T = h^T W^T: h^T is the dot's first operand
    for k0 in range(0, C_IN, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < C_IN
        w = tl.load(
            W + offs_o[:, None] * s_wo + offs_k[None, :] * s_wk, mask=mask_o[:, None] & mask_k[None, :], other=0.0
        )
        mask_h = mask_k[:, None] & mask_p[None, :]
        h = tl.load(H + b * s_hb + offs_k[:, None] * s_hc + offs_p[None, :] * s_hp, mask=mask_h, other=0.0)
        h = _common.computed_operand(h, mask_h, True)
        acc = tl.dot(tl.trans(h.to(DOT)), tl.trans(w.to(DOT)), acc, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(BIAS + b * s_bb + offs_o * s_bo, mask=mask_o, other=0.0).to(ACC)[None, :]
    out = tl.where(acc > 0, acc, tl.exp(tl.minimum(acc, 0.0)) - 1.0)
    tl.store(
        OUT + b * C_OUT * P + offs_o[None, :] * P + offs_p[:, None],
        out.to(OUT.dtype.element_ty),
        mask=mask_p[:, None] & mask_o[None, :],
    )


@triton.jit
def _grad_input_kernel(
    OUT,
    DOUT,
    W,
    DH,
    DBIAS_PART,
    C_IN,
    C_OUT,
    P,
    N_PBLOCKS,
    N_KBLOCKS,
    s_ob,
    s_oo,
    s_op,
    s_gb,
    s_go,
    s_gp,
    s_wo,
    s_wk,
    BIAS_GRAD: tl.constexpr,
    ACC: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """``DH[b, k, p] = sum_o W[o, k] g[b, o, p]`` with ``g = DOUT * elu'(OUT)`` formed per tile; the
    programs of input block 0 write ``DBIAS_PART[b, o, pblock] = sum_p g``. DH contiguous. The input
    block varies fastest over programs, so those reading one g tile run together."""
    pid = tl.program_id(0)
    item = pid // N_KBLOCKS
    b = (item // N_PBLOCKS).to(tl.int64)
    pblock = item % N_PBLOCKS
    pid_k = pid % N_KBLOCKS
    offs_p = pblock * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_p = offs_p < P
    mask_k = offs_k < C_IN
    acc = tl.zeros((BLOCK_K, BLOCK_P), dtype=ACC)
    for o0 in range(0, C_OUT, BLOCK_O):
        offs_o = o0 + tl.arange(0, BLOCK_O)
        mask_o = offs_o < C_OUT
        mask_op = mask_o[:, None] & mask_p[None, :]
        out = tl.load(OUT + b * s_ob + offs_o[:, None] * s_oo + offs_p[None, :] * s_op, mask=mask_op, other=0.0)
        dout = tl.load(DOUT + b * s_gb + offs_o[:, None] * s_go + offs_p[None, :] * s_gp, mask=mask_op, other=0.0)
        g = _elu_grad(out.to(ACC), dout.to(ACC))
        if BIAS_GRAD:
            if pid_k == 0:
                tl.store(DBIAS_PART + ((b * C_OUT + offs_o) * N_PBLOCKS + pblock), tl.sum(g, axis=1), mask=mask_o)
        mask_ko = mask_k[:, None] & mask_o[None, :]
        wt = tl.load(W + offs_k[:, None] * s_wk + offs_o[None, :] * s_wo, mask=mask_ko, other=0.0)
        wt = _common.computed_operand(wt, mask_ko, DOT == tl.float32)
        acc = tl.dot(wt.to(DOT), g.to(DOT), acc, input_precision=PRECISION, out_dtype=ACC)
    tl.store(
        DH + b * C_IN * P + offs_k[:, None] * P + offs_p[None, :],
        acc.to(DH.dtype.element_ty),
        mask=mask_k[:, None] & mask_p[None, :],
    )


@triton.jit
def _grad_weight_kernel(
    OUT,
    DOUT,
    H,
    DW_PART,
    C_OUT,
    C_IN,
    P,
    N_PBLOCKS,
    N_ITEMS,
    ITEMS_PER_SPLIT,
    s_ob,
    s_oo,
    s_op,
    s_gb,
    s_go,
    s_gp,
    s_hb,
    s_hc,
    s_hp,
    ACC: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Partial ``dW[o, k] = sum g[b, o, p] H[b, k, p]`` over one chunk of (sample, pixel block)
    items, g formed per tile; ``DW_PART [S, C_OUT, C_IN]``."""
    split = tl.program_id(0)
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_k = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_o = offs_o < C_OUT
    mask_k = offs_k < C_IN
    acc = tl.zeros((BLOCK_O, BLOCK_K), dtype=ACC)
    first = split * ITEMS_PER_SPLIT
    last = tl.minimum(first + ITEMS_PER_SPLIT, N_ITEMS)
    for item in range(first, last):
        b = (item // N_PBLOCKS).to(tl.int64)
        offs_p = (item % N_PBLOCKS) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        mask_op = mask_o[:, None] & mask_p[None, :]
        out = tl.load(OUT + b * s_ob + offs_o[:, None] * s_oo + offs_p[None, :] * s_op, mask=mask_op, other=0.0)
        dout = tl.load(DOUT + b * s_gb + offs_o[:, None] * s_go + offs_p[None, :] * s_gp, mask=mask_op, other=0.0)
        g = _elu_grad(out.to(ACC), dout.to(ACC))
        ht = tl.load(
            H + b * s_hb + offs_k[None, :] * s_hc + offs_p[:, None] * s_hp,
            mask=mask_p[:, None] & mask_k[None, :],
            other=0.0,
        )
        acc = tl.dot(g.to(DOT), ht.to(DOT), acc, input_precision=PRECISION, out_dtype=ACC)
    tl.store(
        DW_PART + split.to(tl.int64) * C_OUT * C_IN + offs_o[:, None] * C_IN + offs_k[None, :],
        acc,
        mask=mask_o[:, None] & mask_k[None, :],
    )


def conv1x1_bias_elu_forward(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``elu(weight @ h[b] + bias[b, :, None])`` for h ``[B, C_in, P]``, weight ``[C_out, C_in]``,
    bias ``[B, C_out]`` or None (any strides); a contiguous ``[B, C_out, P]`` tensor in h's dtype."""
    batch, c_in, pixels = h.shape
    c_out = weight.shape[0]
    out = _common.new_output((batch, c_out, pixels), h.dtype, h.device)
    if out.numel() == 0:
        return out
    acc = _common.acc_dtype(h, weight)
    block_o, block_k, block_p = _common.dot_tiles((c_out, c_in, pixels), FORWARD_TILES)
    n_pblocks, n_oblocks = triton.cdiv(pixels, block_p), triton.cdiv(c_out, block_o)
    _forward_kernel[(batch * n_pblocks * n_oblocks,)](
        h,
        weight,
        bias if bias is not None else weight,
        out,
        c_in,
        c_out,
        pixels,
        n_pblocks,
        n_oblocks,
        *h.stride(),
        *weight.stride(),
        *(bias.stride() if bias is not None else (0, 0)),
        HAS_BIAS=bias is not None,
        ACC=_common.tl_dtype(acc),
        DOT=_dot_dtype(h, acc),
        PRECISION=_common.conv_dot_precision(acc),
        BLOCK_O=block_o,
        BLOCK_K=block_k,
        BLOCK_P=block_p,
        **_common.gemm_options(_operands(h, acc)),
    )
    return out


def grad_input(
    out: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, bias_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(dh [B, C_in, P] in out's dtype, dbias [B, C_out] in the accumulator dtype or None)`` from
    the saved output ``out`` and ``grad_out`` ``[B, C_out, P]`` (any strides)."""
    batch, c_out, pixels = out.shape
    c_in = weight.shape[1]
    acc = _common.acc_dtype(out, weight)
    grad_h = _common.new_output((batch, c_in, pixels), out.dtype, out.device)
    if batch * pixels == 0 or c_in == 0:
        return grad_h.zero_(), torch.zeros(batch, c_out, dtype=acc, device=out.device) if bias_grad else None
    caps = F32_GRAD_INPUT_TILES if _operands(out, acc) == torch.float32 else GRAD_INPUT_TILES
    block_k, block_o, block_p = _common.dot_tiles((c_in, c_out, pixels), caps)
    n_pblocks, n_kblocks = triton.cdiv(pixels, block_p), triton.cdiv(c_in, block_k)
    partial = _common.new_output((batch, c_out, n_pblocks), acc, out.device) if bias_grad else grad_h
    _grad_input_kernel[(batch * n_pblocks * n_kblocks,)](
        out,
        grad_out,
        weight,
        grad_h,
        partial,
        c_in,
        c_out,
        pixels,
        n_pblocks,
        n_kblocks,
        *out.stride(),
        *grad_out.stride(),
        *weight.stride(),
        BIAS_GRAD=bias_grad,
        ACC=_common.tl_dtype(acc),
        DOT=_dot_dtype(out, acc),
        PRECISION=_common.conv_dot_precision(acc),
        BLOCK_K=block_k,
        BLOCK_O=block_o,
        BLOCK_P=block_p,
        **_common.gemm_options(_operands(out, acc)),
    )
    return grad_h, partial.sum(2) if bias_grad else None


def grad_weight(out: torch.Tensor, grad_out: torch.Tensor, h: torch.Tensor, splits: int | None = None) -> torch.Tensor:
    """``dW = sum_b g[b] @ h[b]^T`` ``[C_out, C_in]`` (float32, float64 for float64 inputs) with
    ``g = grad_out * elu'(out)``; out, grad_out ``[B, C_out, P]``, h ``[B, C_in, P]`` (any strides).
    ``splits`` overrides the number of reduction chunks."""
    batch, c_out, pixels = out.shape
    c_in = h.shape[1]
    acc = _common.acc_dtype(out, h)
    if batch * pixels == 0:
        return torch.zeros(c_out, c_in, dtype=acc, device=h.device)
    precision = _common.conv_dot_precision(acc)
    caps = (*GRAD_WEIGHT_TILES[:2], _common.reduction_cap(GRAD_WEIGHT_TILES[2], _operands(h, acc), precision))
    block_o, block_k, block_p = _common.dot_tiles((c_out, c_in, pixels), caps)
    n_pblocks = triton.cdiv(pixels, block_p)
    items = batch * n_pblocks
    tiles = (triton.cdiv(c_out, block_o), triton.cdiv(c_in, block_k))
    max_splits = (out.numel() + grad_out.numel() + h.numel()) // (c_out * c_in)  # partials no larger than the input
    splits, per_split = _common.reduction_chunks(items, tiles[0] * tiles[1], splits, max_splits)
    dw_part = _common.new_output((splits, c_out, c_in), acc, h.device)
    _grad_weight_kernel[(splits, *tiles)](
        out,
        grad_out,
        h,
        dw_part,
        c_out,
        c_in,
        pixels,
        n_pblocks,
        items,
        per_split,
        *out.stride(),
        *grad_out.stride(),
        *h.stride(),
        ACC=_common.tl_dtype(acc),
        DOT=_dot_dtype(h, acc),
        PRECISION=precision,
        BLOCK_O=block_o,
        BLOCK_K=block_k,
        BLOCK_P=block_p,
        **_common.gemm_options(_operands(h, acc)),
    )
    return dw_part.sum(0)
