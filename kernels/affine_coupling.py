"""Triton kernels of the conditional affine coupling (and its additive variant).

Density direction (x -> y), with x, y viewed as ``[B, C, P]`` (P = pixels, 1 for vectors) and
mu, u as ``[B, Cb, P]`` (any strides):

    y[:, c] = s * x[:, c] + mu[:, j]     if c = start + j * stride (a transformed channel, j < Cb)
              s * (x[:, c] + mu[:, j])   with SHIFT_FIRST (Glow's order)
    y[:, c] = x[:, c]                    otherwise (a conditioning channel, copied)
    logdet[b] = sum log s

With ``affine`` (a ``[2, C]`` tensor, rows w and a: an ActNorm folded into the store) every
channel of the output becomes ``w[c] * out[:, c] + a[c]``, in either direction; the logdet is the
coupling's alone.

Generation direction (y -> x): ``x_b = (y_b - mu) / s`` (``y_b / s - mu`` with SHIFT_FIRST),
``logdet = -sum log s``. The scale ``s = f(u)`` is a compile-time choice (``SCALE``), with one runtime
parameter ``param``:

- ``SCALE_TANH``: Wolf's ``s = 1 + param * tanh(u / 2) = (1 - param) + 2 param sigmoid(u)``
  (``SPECIAL``: param == 1, where ``log s = log 2 - softplus(-u)``);
- ``SCALE_SIGMOID``: Glow's ``s = sigmoid(u + param)``, ``log s = -softplus(-(u + param))``;
- ``SCALE_EXP``: RealNVP's ``s = exp(param * tanh(u / param))`` (soft clamp), or ``exp(u)`` with
  ``SPECIAL``;

and ``RECIPROCAL`` replaces s by 1 / s (normflows' "sigmoid" coupling divides by the sigmoid).
log s and d(log s)/du are formed without ever taking the log of an underflowed s, so both stay
finite for every finite u (s itself may reach 0 or inf where the maths does: unclamped exp).

``(start, stride)`` encodes all four split patterns without any split/cat copy: continuous/up is
``(C - Cb, 1)``, continuous/down ``(0, 1)``, skip/up ``(1, 2)`` and skip/down ``(0, 2)``.

Every program handles ``BLOCK`` consecutive elements of one sample's ``[C, P]`` plane, so it writes
all of y (copied and transformed channels alike) in one pass and stores one partial sum of log s;
the per-sample logdet is the sum of a sample's partials (a tiny torch sum, deterministic, no
atomics). With ``B_ONLY`` a program covers elements of the ``[Cb, P]`` transformed plane instead and
writes only those (the caller's output already holds x_a: the in-place, no-grad use). The backward
kernels recompute s and d(log s)/du from u instead of storing them and store dmu and du through
strides, so both can be halves of the one gradient buffer of a conditioning net's output. With
``affine`` each backward program covers whole channels (rows of pixels) of one sample instead, so that it
stores one partial sum per channel of ``dout * out_before_affine`` and of ``dout`` (the gradients
of w and a; summed in torch, deterministic); small planes (the 4x4 top level) put several channels
in one program.
All arithmetic is in float32 (float64 for float64 inputs); outputs are stored in their input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastflow.kernels import _common

MIN_BLOCK, MAX_BLOCK = 16, 1024  # elements per program
SCALE_TANH, SCALE_SIGMOID, SCALE_EXP = 0, 1, 2


def _block_size(plane: int) -> int:
    """Elements of one sample's ``[C, P]`` plane per program: a power of two in [MIN_BLOCK, MAX_BLOCK]."""
    return _common.pow2_tile(plane, MIN_BLOCK, MAX_BLOCK)


def _strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    """Strides of a ``[B, C, P]`` view (zeros for an absent tensor)."""
    return (0, 0, 0) if t is None else tuple(t.stride())


@triton.jit
def _transformed(c, START, STRIDE: tl.constexpr, CB):
    """Whether channel ``c`` is transformed, and its index j into mu and u (0 where it is not)."""
    d = c - START
    is_b = (d >= 0) & (d % STRIDE == 0) & (d < CB * STRIDE)
    return is_b, tl.where(is_b, d // STRIDE, 0)


@triton.jit
def _block_elements(pid, C, CB, P, N_BLOCKS, START, STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    """The elements of program ``pid``: its sample ``b`` (int64), then for each of its ``BLOCK``
    positions in the sample's ``[C, P]`` plane the channel ``c``, pixel ``p``, whether it is
    ``inside`` the plane, whether it is a transformed channel ``is_b`` (and inside), and ``j``,
    its index into mu and u."""
    b = (pid // N_BLOCKS).to(tl.int64)
    i = (pid % N_BLOCKS) * BLOCK + tl.arange(0, BLOCK)
    inside = i < C * P
    c = i // P
    p = i % P
    is_b, j = _transformed(c, START, STRIDE, CB)
    return b, c, p, inside, is_b & inside, j


@triton.jit
def _plane_block_elements(pid, C, CB, P, N_BLOCKS, START, STRIDE: tl.constexpr, BLOCK: tl.constexpr, ROW: tl.constexpr):
    """As :func:`_block_elements` for programs that each cover ``BLOCK // ROW`` channels times ``ROW``
    pixels of one sample (``N_BLOCKS`` programs per row of ``P`` pixels): position ``i`` is channel
    ``i // ROW`` of the program's channel block, pixel ``i % ROW`` of its pixel block."""
    CPB: tl.constexpr = BLOCK // ROW
    per_sample = tl.cdiv(C, CPB) * N_BLOCKS
    b = (pid // per_sample).to(tl.int64)
    r = pid % per_sample
    i = tl.arange(0, BLOCK)
    c = (r // N_BLOCKS) * CPB + i // ROW
    p = (r % N_BLOCKS) * ROW + i % ROW
    inside = (p < P) & (c < C)
    is_b, j = _transformed(c, START, STRIDE, CB)
    return b, c, p, inside, is_b & inside, j


@triton.jit
def _backward_elements(
    pid,
    C,
    CB,
    P,
    N_BLOCKS,
    START,
    STRIDE: tl.constexpr,
    BLOCK: tl.constexpr,
    ROW: tl.constexpr,
    AFFINE: tl.constexpr,
):
    """A backward program's elements (:func:`_block_elements`; with AFFINE :func:`_plane_block_elements`,
    whole channels per program for its per-channel partial sums), then the mask of its loads of the
    op's input: every element with AFFINE (the output before the affine is recomputed on the
    conditioning channels too), the transformed ones otherwise."""
    if AFFINE:
        b, c, p, inside, is_b, j = _plane_block_elements(pid, C, CB, P, N_BLOCKS, START, STRIDE, BLOCK, ROW)
        input_mask = inside
    else:
        b, c, p, inside, is_b, j = _block_elements(pid, C, CB, P, N_BLOCKS, START, STRIDE, BLOCK)
        input_mask = is_b
    return b, c, p, inside, is_b, j, input_mask


@triton.jit
def _store_affine_partials(AFF_PART, pid, inside, d_out, z, BLOCK: tl.constexpr, ROW: tl.constexpr):
    """One program's per-channel sums of ``d_out * z`` and of ``d_out`` (gradients of the affine's w
    and a): ``BLOCK // ROW`` values each, at ``AFF_PART[0 or 1, pid, :]``."""
    CPB: tl.constexpr = BLOCK // ROW
    total = tl.num_programs(0) * CPB
    k = pid * CPB + tl.arange(0, CPB)
    tl.store(AFF_PART + k, tl.sum(tl.reshape(tl.where(inside, d_out * z, 0.0), (CPB, ROW)), axis=1))
    tl.store(AFF_PART + total + k, tl.sum(tl.reshape(tl.where(inside, d_out, 0.0), (CPB, ROW)), axis=1))


@triton.jit
def _sigmoids(v):
    """``exp(-|v|)``, ``sigmoid(v)`` and ``sigmoid(-v)``, none of which overflows."""
    e = tl.exp(-tl.abs(v))  # in (0, 1]
    pos = tl.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    neg = tl.where(v >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
    return e, pos, neg


@triton.jit
def _scale_terms(u, param, SCALE: tl.constexpr, SPECIAL: tl.constexpr, RECIPROCAL: tl.constexpr, INV: tl.constexpr):
    """``s`` (``1 / s`` with INV), ``log s`` and ``d(log s)/du`` of the scale function (module docstring).

    ``param`` arrives as a float32 scalar: alpha (tanh), the offset (sigmoid) or the clamp (exp).
    Only the factor asked for is formed (s may underflow where 1 / s overflows, and vice versa).
    """
    if SCALE == 0:  # SCALE_TANH
        e, sig_pos, sig_neg = _sigmoids(u)
        if SPECIAL:
            s = 2.0 * sig_pos
            log_s = tl.minimum(u, 0.0) + tl.log(2.0 / (1.0 + e))
            dlog_s = sig_neg
        else:
            s = (1.0 - param) + 2.0 * param * sig_pos
            log_s = tl.log(s)
            dlog_s = 2.0 * param * sig_pos * sig_neg / s
        if INV != RECIPROCAL:  # the factor asked for is 1 / f(u)
            s = 1.0 / s
    elif SCALE == 1:  # SCALE_SIGMOID
        v = u + param
        e, s, dlog_s = _sigmoids(v)
        log_s = tl.minimum(v, 0.0) - tl.log(1.0 + e)
        if INV != RECIPROCAL:  # the factor asked for is 1 / f(u)
            s = tl.exp(-log_s)
    else:  # SCALE_EXP
        if SPECIAL:
            log_s = u
            dlog_s = tl.full(u.shape, 1.0, u.dtype)
        else:
            w = u / param
            e2 = tl.exp(-2.0 * tl.abs(w))  # tanh(|w|) = (1 - e2) / (1 + e2), no overflow
            th = (1.0 - e2) / (1.0 + e2)
            log_s = param * tl.where(w >= 0, th, -th)
            dlog_s = 4.0 * e2 / ((1.0 + e2) * (1.0 + e2))
        if INV != RECIPROCAL:
            s = tl.exp(-log_s)
        else:
            s = tl.exp(log_s)
    if RECIPROCAL:
        return s, -log_s, -dlog_s
    return s, log_s, dlog_s


@triton.jit
def _coupling_kernel(
    X,
    MU,
    U,
    AFF,
    Y,
    LOGDET_PART,
    C,
    CB,
    P,
    N_BLOCKS,
    START,
    param,
    s_xb,
    s_xc,
    s_xp,
    s_mb,
    s_mc,
    s_mp,
    s_ub,
    s_uc,
    s_up,
    s_yb,
    s_yc,
    s_yp,
    INVERSE: tl.constexpr,
    STRIDE: tl.constexpr,
    HAS_U: tl.constexpr,
    SCALE: tl.constexpr,
    SPECIAL: tl.constexpr,
    RECIPROCAL: tl.constexpr,
    SHIFT_FIRST: tl.constexpr,
    B_ONLY: tl.constexpr,
    AFFINE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One block of one sample, X -> Y: the density direction (y_b = s x_b + mu, partial sum of
    log s per program) or, with INVERSE, the generation direction (x_b = (y_b - mu) / s, -log s).
    With B_ONLY the block indexes the transformed plane ``[Cb, P]`` and only y_b is stored; with
    AFFINE every stored value is ``AFF[0, c] * y + AFF[1, c]``."""
    pid = tl.program_id(0)
    if B_ONLY:
        b = (pid // N_BLOCKS).to(tl.int64)
        i = (pid % N_BLOCKS) * BLOCK + tl.arange(0, BLOCK)
        inside = i < CB * P
        j = tl.where(inside, i // P, 0)
        p = i % P
        c = START + j * STRIDE
        is_b = inside
    else:
        b, c, p, inside, is_b, j = _block_elements(pid, C, CB, P, N_BLOCKS, START, STRIDE, BLOCK)
    x = tl.load(X + b * s_xb + c * s_xc + p * s_xp, mask=inside, other=0.0).to(ACC)
    mu = tl.load(MU + b * s_mb + j * s_mc + p * s_mp, mask=is_b, other=0.0).to(ACC)
    if HAS_U:
        u = tl.load(U + b * s_ub + j * s_uc + p * s_up, mask=is_b, other=0.0).to(ACC)
        s, log_s, _ = _scale_terms(u, param, SCALE, SPECIAL, RECIPROCAL, INVERSE)
        log_det = tl.sum(tl.where(is_b, log_s, 0.0), axis=0)
        if INVERSE:
            inv_s = s
            if SHIFT_FIRST:
                y_b = x * inv_s - mu
            else:
                y_b = (x - mu) * inv_s
            log_det = -log_det
        else:
            if SHIFT_FIRST:
                y_b = s * (x + mu)
            else:
                y_b = s * x + mu
        y = tl.where(is_b, y_b, x)
        tl.store(LOGDET_PART + pid, log_det)
    else:
        y = tl.where(is_b, x - mu, x) if INVERSE else tl.where(is_b, x + mu, x)
    if AFFINE:
        y = y * tl.load(AFF + c, mask=inside, other=1.0) + tl.load(AFF + C + c, mask=inside, other=0.0)
    tl.store(Y + b * s_yb + c * s_yc + p * s_yp, y.to(Y.dtype.element_ty), mask=inside)


@triton.jit
def _coupling_forward_backward_kernel(
    X,
    MU,
    U,
    AFF,
    DY,
    DLOGDET,
    DX,
    DMU,
    DU,
    AFF_PART,
    C,
    CB,
    P,
    N_BLOCKS,
    START,
    param,
    s_xb,
    s_xc,
    s_xp,
    s_mb,
    s_mc,
    s_mp,
    s_ub,
    s_uc,
    s_up,
    s_gb,
    s_gc,
    s_gp,
    s_dmb,
    s_dmc,
    s_dub,
    s_duc,
    STRIDE: tl.constexpr,
    HAS_U: tl.constexpr,
    SCALE: tl.constexpr,
    SPECIAL: tl.constexpr,
    RECIPROCAL: tl.constexpr,
    SHIFT_FIRST: tl.constexpr,
    AFFINE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    ROW: tl.constexpr,
):
    """Gradients of the density direction. ``y_b = s x_b + mu``: dx_b = s dy_b, dmu = dy_b,
    du = d(log s)/du * (dy_b * s x_b + dlogdet[b]); SHIFT_FIRST ``y_b = s (x_b + mu)``: dx_b = dmu
    = s dy_b, du = d(log s)/du * (dy_b * s (x_b + mu) + dlogdet[b]); dx_a = dy_a.  DY and DX
    ``[B, C, P]`` share strides; DMU and DU ``[B, Cb, P]`` have unit pixel stride. With AFFINE, dy is
    first multiplied by ``AFF[0, c]`` and the program stores its affine partial sums, recomputing y."""
    pid = tl.program_id(0)
    b, c, p, inside, is_b, j, x_mask = _backward_elements(pid, C, CB, P, N_BLOCKS, START, STRIDE, BLOCK, ROW, AFFINE)
    d_out = tl.load(DY + b * s_gb + c * s_gc + p * s_gp, mask=inside, other=0.0).to(ACC)
    dy = d_out * tl.load(AFF + c, mask=inside, other=0.0) if AFFINE else d_out
    if HAS_U or AFFINE:
        x = tl.load(X + b * s_xb + c * s_xc + p * s_xp, mask=x_mask, other=0.0).to(ACC)
    if (HAS_U and SHIFT_FIRST) or AFFINE:
        mu = tl.load(MU + b * s_mb + j * s_mc + p * s_mp, mask=is_b, other=0.0).to(ACC)
    if HAS_U:
        u = tl.load(U + b * s_ub + j * s_uc + p * s_up, mask=is_b, other=0.0).to(ACC)
        g = tl.load(DLOGDET + b).to(ACC)
        s, _, dlog_s = _scale_terms(u, param, SCALE, SPECIAL, RECIPROCAL, False)
        if SHIFT_FIRST:
            sx = s * (x + mu)
            y_b = sx
            dmu = s * dy
        else:
            sx = s * x
            if AFFINE:
                y_b = sx + mu
            dmu = dy
        dx = tl.where(is_b, s * dy, dy)
        du = dlog_s * (dy * sx + g)
        tl.store(DU + b * s_dub + j * s_duc + p, du.to(DU.dtype.element_ty), mask=is_b)
    else:
        if AFFINE:
            y_b = x + mu
        dx = dy
        dmu = dy
    tl.store(DX + b * s_gb + c * s_gc + p * s_gp, dx.to(DX.dtype.element_ty), mask=inside)
    tl.store(DMU + b * s_dmb + j * s_dmc + p, dmu.to(DMU.dtype.element_ty), mask=is_b)
    if AFFINE:
        _store_affine_partials(AFF_PART, pid, inside, d_out, tl.where(is_b, y_b, x), BLOCK, ROW)


@triton.jit
def _coupling_inverse_backward_kernel(
    Y,
    MU,
    U,
    AFF,
    DX,
    DLOGDET,
    DY,
    DMU,
    DU,
    AFF_PART,
    C,
    CB,
    P,
    N_BLOCKS,
    START,
    param,
    s_yb,
    s_yc,
    s_yp,
    s_mb,
    s_mc,
    s_mp,
    s_ub,
    s_uc,
    s_up,
    s_gb,
    s_gc,
    s_gp,
    s_dmb,
    s_dmc,
    s_dub,
    s_duc,
    STRIDE: tl.constexpr,
    HAS_U: tl.constexpr,
    SCALE: tl.constexpr,
    SPECIAL: tl.constexpr,
    RECIPROCAL: tl.constexpr,
    SHIFT_FIRST: tl.constexpr,
    AFFINE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    ROW: tl.constexpr,
):
    """Gradients of the generation direction, recomputing x_b. ``x_b = (y_b - mu) / s``:
    dy_b = dx_b / s, dmu = -dx_b / s, du = -d(log s)/du * (dx_b * x_b + dlogdet[b]); SHIFT_FIRST
    ``x_b = y_b / s - mu``: dy_b = dx_b / s, dmu = -dx_b, du = -d(log s)/du * (dx_b * y_b / s +
    dlogdet[b]); dy_a = dx_a. With AFFINE as in the density direction's backward."""
    pid = tl.program_id(0)
    b, c, p, inside, is_b, j, y_mask = _backward_elements(pid, C, CB, P, N_BLOCKS, START, STRIDE, BLOCK, ROW, AFFINE)
    d_out = tl.load(DX + b * s_gb + c * s_gc + p * s_gp, mask=inside, other=0.0).to(ACC)
    dx = d_out * tl.load(AFF + c, mask=inside, other=0.0) if AFFINE else d_out
    if HAS_U or AFFINE:
        y = tl.load(Y + b * s_yb + c * s_yc + p * s_yp, mask=y_mask, other=0.0).to(ACC)
    if (HAS_U and not SHIFT_FIRST) or AFFINE:
        mu = tl.load(MU + b * s_mb + j * s_mc + p * s_mp, mask=is_b, other=0.0).to(ACC)
    if HAS_U:
        u = tl.load(U + b * s_ub + j * s_uc + p * s_up, mask=is_b, other=0.0).to(ACC)
        g = tl.load(DLOGDET + b).to(ACC)
        inv_s, _, dlog_s = _scale_terms(u, param, SCALE, SPECIAL, RECIPROCAL, True)
        inv_s = tl.where(is_b, inv_s, 1.0)
        dy = tl.where(is_b, dx * inv_s, dx)
        if SHIFT_FIRST:
            x_s = y * inv_s
            if AFFINE:
                x_b = x_s - mu
            dmu = -dx
        else:
            x_s = (y - mu) * inv_s
            x_b = x_s
            dmu = -dy
        du = -dlog_s * (dx * x_s + g)
        tl.store(DU + b * s_dub + j * s_duc + p, du.to(DU.dtype.element_ty), mask=is_b)
    else:
        if AFFINE:
            x_b = y - mu
        dy = dx
        dmu = -dx
    tl.store(DY + b * s_gb + c * s_gc + p * s_gp, dy.to(DY.dtype.element_ty), mask=inside)
    tl.store(DMU + b * s_dmb + j * s_dmc + p, dmu.to(DMU.dtype.element_ty), mask=is_b)
    if AFFINE:
        _store_affine_partials(AFF_PART, pid, inside, d_out, tl.where(is_b, x_b, y), BLOCK, ROW)


def _grid(batch: int, plane: int, block: int) -> tuple[int, tuple[int]]:
    n_blocks = triton.cdiv(plane, block)
    return n_blocks, (batch * n_blocks,)


def _form_constexprs(form: tuple[int, float, bool, bool, bool]) -> tuple[float, dict]:
    """``form = (scale code, param, special, reciprocal, shift_first)`` -> (param, constexprs)."""
    code, param, special, reciprocal, shift_first = form
    return float(param), dict(SCALE=code, SPECIAL=special, RECIPROCAL=reciprocal, SHIFT_FIRST=shift_first)


def coupling_apply(
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    start: int,
    stride: int,
    form: tuple[int, float, bool, bool, bool],
    inverse: bool = False,
    out: torch.Tensor | None = None,
    affine: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction of the coupling on ``[B, C, P]`` views.

    ``inverse=False``: x -> (y, logdet); ``inverse=True``: x plays y and the result is
    (x, -sum log s). x ``[B, C, P]``, mu and u ``[B, Cb, P]`` (any strides); ``form`` as in
    :func:`_form_constexprs`; ``affine`` ``[2, C]`` (contiguous, the accumulation dtype) maps every
    output channel to ``affine[0, c] * out + affine[1, c]``. Returns a contiguous ``[B, C, P]``
    tensor of x's dtype and a logdet ``[B]`` in float32 (float64 for float64 input). ``out``
    (``[B, C, P]``, x's dtype, possibly x itself) is written in place of a new tensor: without
    ``affine`` it must already hold the conditioning channels, and only the transformed ones are
    written; with ``affine`` every channel is.
    """
    batch, channels, pixels = x.shape
    cb = mu.shape[1]
    acc = _common.acc_dtype(x, mu, u)
    b_only = out is not None and affine is None
    if out is None:
        out = _common.new_output((batch, channels, pixels), x.dtype, x.device)
    if out.numel() == 0 or u is None:  # the logdet is zero (an empty or additive coupling)
        logdet = torch.zeros(batch, dtype=acc, device=x.device)
        if out.numel() == 0:
            return out, logdet
    plane = (cb if b_only else channels) * pixels
    block = _block_size(plane)
    n_blocks, grid = _grid(batch, plane, block)
    partial = _common.new_output((batch, n_blocks), acc, x.device) if u is not None else logdet
    param, constexprs = _form_constexprs(form)
    _coupling_kernel[grid](
        x,
        mu,
        u if u is not None else mu,
        affine if affine is not None else mu,
        out,
        partial,
        channels,
        cb,
        pixels,
        n_blocks,
        start,
        param,
        *x.stride(),
        *mu.stride(),
        *_strides(u),
        *out.stride(),
        INVERSE=inverse,
        STRIDE=stride,
        HAS_U=u is not None,
        B_ONLY=b_only,
        AFFINE=affine is not None,
        ACC=_common.tl_dtype(acc),
        BLOCK=block,
        **constexprs,
    )
    return out, (partial.sum(1) if u is not None else logdet)


def coupling_backward(
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    grad_out: torch.Tensor,
    grad_logdet: torch.Tensor,
    start: int,
    stride: int,
    form: tuple[int, float, bool, bool, bool],
    inverse: bool = False,
    d_mu: torch.Tensor | None = None,
    d_u: torch.Tensor | None = None,
    affine: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`coupling_apply` with respect to its input, mu, u and affine.

    ``x``, ``mu``, ``u``, ``affine`` are the inputs of that call (for ``inverse=True`` ``x`` is y);
    grad_out ``[B, C, P]``, grad_logdet ``[B]``. ``d_mu`` and ``d_u`` may be given as ``[B, Cb, P]``
    views with unit pixel stride (two halves of one buffer); otherwise they are allocated contiguous.
    Returns (d input ``[B, C, P]`` contiguous, dmu, du, d affine ``[2, C]``), each in its input's
    dtype; du is None for the additive coupling, d affine None without affine.
    """
    batch, channels, pixels = x.shape
    cb = mu.shape[1]
    acc = _common.acc_dtype(x, mu, u)
    grad_out = grad_out.contiguous()
    d_in = _common.new_output((batch, channels, pixels), x.dtype, x.device)
    if d_mu is None:
        d_mu = _common.new_output((batch, cb, pixels), mu.dtype, x.device)
    if d_u is None and u is not None:
        d_u = _common.new_output((batch, cb, pixels), u.dtype, x.device)
    if d_in.numel() == 0:
        return d_in, d_mu, d_u, None if affine is None else torch.zeros_like(affine)
    if affine is None:  # programs over blocks of a sample's [C, P] plane
        block = row = _block_size(channels * pixels)
        n_blocks, grid = _grid(batch, channels * pixels, block)
        partial = grad_logdet
    else:  # programs over whole channels' pixels (several small channels at once), partial sums per channel
        row = _common.pow2_tile(pixels, 1, MAX_BLOCK)
        block = max(MIN_BLOCK, row * _common.pow2_tile(channels, 1, MAX_BLOCK // row))
        n_blocks, n_cblocks = triton.cdiv(pixels, row), triton.cdiv(channels, block // row)
        grid = (batch * n_cblocks * n_blocks,)
        partial = _common.new_output((2, batch, n_cblocks, n_blocks, block // row), acc, x.device)
    grad_logdet = grad_logdet.contiguous()
    param, constexprs = _form_constexprs(form)
    kernel = _coupling_inverse_backward_kernel if inverse else _coupling_forward_backward_kernel
    d_u_or_mu = d_u if d_u is not None else d_mu
    kernel[grid](
        x,
        mu,
        u if u is not None else mu,
        affine if affine is not None else mu,
        grad_out,
        grad_logdet,
        d_in,
        d_mu,
        d_u_or_mu,
        partial,
        channels,
        cb,
        pixels,
        n_blocks,
        start,
        param,
        *x.stride(),
        *mu.stride(),
        *_strides(u),
        *grad_out.stride(),
        d_mu.stride(0),
        d_mu.stride(1),
        d_u_or_mu.stride(0),
        d_u_or_mu.stride(1),
        STRIDE=stride,
        HAS_U=u is not None,
        AFFINE=affine is not None,
        ACC=_common.tl_dtype(acc),
        BLOCK=block,
        ROW=row,
        **constexprs,
    )
    if affine is None:
        return d_in, d_mu, d_u, None
    return d_in, d_mu, d_u, partial.sum((1, 3)).flatten(1)[:, :channels].to(affine.dtype)
