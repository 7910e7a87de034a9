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

Every program handles a ``[ROWS, COLS]`` tile whose columns run along the contiguous axis, so that
loads and stores are vectorised: for images (P > 1) ROWS channels of one sample times COLS pixels,
for vectors (P == 1, ``VECTOR``) COLS channels of one sample (ROWS == 1). It writes all of y in its tile
(copied and transformed channels alike) and stores one partial sum of log s per row (a vector
store); the per-sample logdet is the sum of a sample's partials (a tiny torch sum, deterministic,
no atomics). Per-channel values (the affine's rows) are loaded once per channel of the tile, not per
element. For vectors with a skip split (``PAIRS``) mu and u are loaded (and dmu, du stored) as
half-width tiles of consecutive transformed channels, spread over (gathered from) the channel pairs
in registers. With ``B_ONLY`` the tile's channels are those of the ``[Cb, P]`` transformed plane
and only they are written (the caller's output already holds x_a: the in-place, no-grad use). The
backward kernels recompute s and d(log s)/du from u instead of storing them and store dmu and du
through strides, so both can be halves of the one gradient buffer of a conditioning net's output.
With ``affine`` each backward program also stores its tile's sums per channel of
``dout * out_before_affine`` and of ``dout`` (the gradients of w and a; summed in torch,
deterministic).
All arithmetic is in float32 (float64 for float64 inputs); outputs are stored in their input dtype.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from fastflow.kernels import _common

TILE = 2048  # elements per program (16 per thread of 4 warps: several 128-bit accesses per tensor)
MAX_COLS = 512  # pixels per tile row
VECTOR_COLS = 512  # channels per warp for vectors (P == 1)
MAX_CHUNKS = 3  # tiles per program where per-channel reads are narrow (3: >= 90% of accesses 128-bit)
SCALE_TANH, SCALE_SIGMOID, SCALE_EXP = 0, 1, 2


def _strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    """Strides of a ``[B, C, P]`` view (zeros for an absent tensor)."""
    return (0, 0, 0) if t is None else tuple(t.stride())


@triton.jit
def _tile(
    pid,
    chunk,
    C,
    CB,
    P,
    N_CB,
    N_PB,
    START,
    STRIDE: tl.constexpr,
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
    CHUNKS: tl.constexpr,
    VECTOR: tl.constexpr,
    PAIRS: tl.constexpr,
    B_ONLY: tl.constexpr,
):
    """The elements of tile ``chunk`` (of CHUNKS) of program ``pid``, a ``[ROWS, COLS]`` tile, as
    broadcastable index tensors: sample ``b`` (an int64 scalar), channel ``c``, pixel ``p``, whether the channel exists
    (``on_channel``), whether the element is ``inside`` the tensor, whether it is a transformed one
    (``is_b``, inside) and ``j``, its index into mu and u (meaningful only where ``is_b``); then the
    half-width tile of PAIRS (``pair_j`` and its mask; ``j`` and ``is_b`` otherwise).

    Images: programs run over (sample, block of ROWS channels, block of CHUNKS * COLS pixels), pixels
    fastest; chunk k of a program is its k-th COLS pixels.
    Vectors (ROWS == 1, ``b`` a scalar too): over (sample, block of COLS channels). With B_ONLY the channel blocks are
    blocks of transformed channels j (``c = START + j * STRIDE``)."""
    cols = tl.arange(0, COLS)[None, :]
    if VECTOR:
        b = (pid // N_CB).to(tl.int64)
        k = (pid % N_CB) * COLS + cols
        p = 0
    else:
        b = (pid // (N_CB * N_PB)).to(tl.int64)
        r = pid % (N_CB * N_PB)
        k = (r // N_PB) * ROWS + tl.arange(0, ROWS)[:, None]
        p = ((r % N_PB) * CHUNKS + chunk) * COLS + cols
    if B_ONLY:
        j = k
        c = START + j * STRIDE
        on_channel = j < CB
        inside = on_channel if VECTOR else on_channel & (p < P)
        is_b = inside
    else:
        c = k
        on_channel = c < C
        inside = on_channel if VECTOR else on_channel & (p < P)
        d = c - START
        is_b = inside & (d >= 0) & (d < CB * STRIDE)
        if STRIDE > 1:
            is_b = is_b & (d % STRIDE == 0)
            j = d // STRIDE
        else:
            j = d
    if PAIRS:  # vectors, skip split with START in {0, 1}: pair i holds channels 2i, 2i + 1 and j = i
        pair_j = (pid % N_CB) * (COLS // 2) + tl.arange(0, COLS // 2)[None, :]
        pair_mask = pair_j < CB
    else:
        pair_j = j
        pair_mask = is_b
    return b, c, p, on_channel, inside, is_b, j, pair_j, pair_mask


@triton.jit
def _load_b(
    PTR, b, j, p, s_b, s_c, s_p, mask, pair_j, pair_mask, ROWS: tl.constexpr, COLS: tl.constexpr, PAIRS: tl.constexpr
):
    """mu or u (``[B, Cb, P]``) at the tile's transformed elements (0 elsewhere); with PAIRS loaded as a
    half-width tile of consecutive j and spread over both channels of each pair (the caller keeps the
    transformed ones)."""
    if PAIRS:
        half = tl.load(PTR + b * s_b + pair_j * s_c, mask=pair_mask, other=0.0)
        value = tl.reshape(tl.join(half, half), (ROWS, COLS))
    else:
        value = tl.load(PTR + b * s_b + j * s_c + p * s_p, mask=mask, other=0.0)
    return value


@triton.jit
def _store_b(
    PTR,
    value,
    b,
    j,
    p,
    s_b,
    s_c,
    mask,
    pair_j,
    pair_mask,
    start_parity,
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
    PAIRS: tl.constexpr,
):
    """Stores the tile's transformed elements of ``value`` into dmu or du (``[B, Cb, P]``, unit pixel
    stride); with PAIRS as a half-width tile, the channel of each pair of parity ``start_parity``
    (START % 2 as a float: Triton specialises an int 1 into a constant, and with the other half of
    each pair known dead the compiler would split the 128-bit loads of x into 32-bit ones)."""
    if PAIRS:
        even, odd = tl.split(tl.reshape(value, (ROWS, COLS // 2, 2)))
        tl.store(PTR + b * s_b + pair_j * s_c, tl.where(start_parity == 0.0, even, odd), mask=pair_mask)
    else:
        tl.store(PTR + b * s_b + j * s_c + p, value, mask=mask)


@triton.jit
def _per_channel(
    PTR, c, on_channel, other, ROWS: tl.constexpr, COLS: tl.constexpr, VECTOR: tl.constexpr, ROWS_DIVIDE_C: tl.constexpr
):
    """``PTR[c]``, a per-channel value (``other`` where the channel does not exist), for the tile's
    channels. For images (``c`` a column of ROWS channels) it is read as a ``[ROWS, 512 / ROWS]`` block
    of copies, so that each thread reads consecutive channels' values in one access (the copies along
    a row are equal, and their max is the value); with ROWS_DIVIDE_C without a mask."""
    if VECTOR:
        value = tl.load(PTR + c, mask=on_channel, other=other)
    else:
        copies = tl.zeros((ROWS, max(1, 512 // ROWS)), tl.int32)
        if ROWS_DIVIDE_C:
            block = tl.load(PTR + c + copies)
        else:
            block = tl.load(PTR + c + copies, mask=on_channel, other=other)
        value = tl.max(block, axis=1)[:, None]
    return value


@triton.jit
def _affine_sums(inside, d_out, z, VECTOR: tl.constexpr):
    """A tile's per-channel sums of ``d_out * z`` and of ``d_out`` (gradients of the affine's w and a):
    along its rows for images, its columns for vectors."""
    AXIS: tl.constexpr = 0 if VECTOR else 1
    return tl.sum(tl.where(inside, d_out * z, 0.0), axis=AXIS), tl.sum(tl.where(inside, d_out, 0.0), axis=AXIS)


@triton.jit
def _store_affine_partials(AFF_PART, pid, sum_dz, sum_d, ROWS: tl.constexpr, COLS: tl.constexpr, VECTOR: tl.constexpr):
    """One program's per-channel sums (:func:`_affine_sums`), one pair per channel of its tiles: for
    images ROWS pairs at ``AFF_PART[pid, :, 0 or 1]`` (one store of a few values), for vectors COLS
    values each at ``AFF_PART[0 or 1, pid, :]`` (two full-width stores)."""
    N: tl.constexpr = COLS if VECTOR else ROWS
    k = pid * N + tl.arange(0, N)
    if VECTOR:
        tl.store(AFF_PART + k, sum_dz)
        tl.store(AFF_PART + tl.num_programs(0) * N + k, sum_d)
    else:
        tl.store(AFF_PART + 2 * k[:, None] + tl.arange(0, 2)[None, :], tl.join(sum_dz, sum_d))


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
    AFF_A,
    Y,
    LOGDET_PART,
    C,
    CB,
    P,
    N_CB,
    N_PB,
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
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
    CHUNKS: tl.constexpr,
    VECTOR: tl.constexpr,
    ROWS_DIVIDE_C: tl.constexpr,
    PAIRS: tl.constexpr,
):
    """One tile, X -> Y: the density direction (y_b = s x_b + mu, partial sums of log s per tile row)
    or, with INVERSE, the generation direction (x_b = (y_b - mu) / s, -log s). With B_ONLY the tile's
    channels are transformed ones and only y_b is stored; with AFFINE every stored value is
    ``AFF[c] * y + AFF_A[c]`` (rows w and a of the affine; a separate pointer, so that its
    alignment is known)."""
    pid = tl.program_id(0)
    b, c, _, on_channel, _, _, _, _, _ = _tile(
        pid, 0, C, CB, P, N_CB, N_PB, START, STRIDE, ROWS, COLS, CHUNKS, VECTOR, PAIRS, B_ONLY
    )
    if AFFINE:
        w = _per_channel(AFF, c, on_channel, 1.0, ROWS, COLS, VECTOR, ROWS_DIVIDE_C)
        a = _per_channel(AFF_A, c, on_channel, 0.0, ROWS, COLS, VECTOR, ROWS_DIVIDE_C)
    log_det = tl.zeros((ROWS,), ACC)
    for chunk in tl.static_range(CHUNKS):
        b, c, p, on_channel, inside, is_b, j, pair_j, pair_mask = _tile(
            pid, chunk, C, CB, P, N_CB, N_PB, START, STRIDE, ROWS, COLS, CHUNKS, VECTOR, PAIRS, B_ONLY
        )
        x = tl.load(X + b * s_xb + c * s_xc + p * s_xp, mask=inside, other=0.0).to(ACC)
        mu = _load_b(MU, b, j, p, s_mb, s_mc, s_mp, is_b, pair_j, pair_mask, ROWS, COLS, PAIRS).to(ACC)
        if HAS_U:
            u = _load_b(U, b, j, p, s_ub, s_uc, s_up, is_b, pair_j, pair_mask, ROWS, COLS, PAIRS).to(ACC)
            s, log_s, _ = _scale_terms(u, param, SCALE, SPECIAL, RECIPROCAL, INVERSE)
            log_det += tl.sum(tl.where(is_b, log_s, 0.0), axis=1)
            if INVERSE:
                if SHIFT_FIRST:
                    y_b = x * s - mu
                else:
                    y_b = (x - mu) * s
            else:
                if SHIFT_FIRST:
                    y_b = s * (x + mu)
                else:
                    y_b = s * x + mu
            y = tl.where(is_b, y_b, x)
        else:
            y = tl.where(is_b, x - mu, x) if INVERSE else tl.where(is_b, x + mu, x)
        if AFFINE:
            y = y * w + a
        tl.store(Y + b * s_yb + c * s_yc + p * s_yp, y.to(Y.dtype.element_ty), mask=inside)
    if HAS_U:
        tl.store(LOGDET_PART + pid * ROWS + tl.arange(0, ROWS), -log_det if INVERSE else log_det)


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
    N_CB,
    N_PB,
    START,
    param,
    start_parity,
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
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
    CHUNKS: tl.constexpr,
    VECTOR: tl.constexpr,
    ROWS_DIVIDE_C: tl.constexpr,
    PAIRS: tl.constexpr,
):
    """Gradients of the density direction. ``y_b = s x_b + mu``: dx_b = s dy_b, dmu = dy_b,
    du = d(log s)/du * (dy_b * s x_b + dlogdet[b]); SHIFT_FIRST ``y_b = s (x_b + mu)``: dx_b = dmu
    = s dy_b, du = d(log s)/du * (dy_b * s (x_b + mu) + dlogdet[b]); dx_a = dy_a.  DY and DX
    ``[B, C, P]`` share strides; DMU and DU ``[B, Cb, P]`` have unit pixel stride. With AFFINE, dy is
    first multiplied by ``AFF[0, c]`` and the program stores its affine partial sums, recomputing y."""
    pid = tl.program_id(0)
    b, c, _, on_channel, _, _, _, _, _ = _tile(
        pid, 0, C, CB, P, N_CB, N_PB, START, STRIDE, ROWS, COLS, CHUNKS, VECTOR, PAIRS, False
    )
    if AFFINE:
        w = _per_channel(AFF, c, on_channel, 0.0, ROWS, COLS, VECTOR, ROWS_DIVIDE_C)
        N: tl.constexpr = COLS if VECTOR else ROWS
        sum_dz = tl.zeros((N,), ACC)
        sum_d = tl.zeros((N,), ACC)
    if HAS_U:
        g = tl.load(DLOGDET + b).to(ACC)
    for chunk in tl.static_range(CHUNKS):
        b, c, p, on_channel, inside, is_b, j, pair_j, pair_mask = _tile(
            pid, chunk, C, CB, P, N_CB, N_PB, START, STRIDE, ROWS, COLS, CHUNKS, VECTOR, PAIRS, False
        )
        x_mask = inside if AFFINE or PAIRS else is_b  # x_a is needed with AFFINE; PAIRS loads whole pairs
        d_out = tl.load(DY + b * s_gb + c * s_gc + p * s_gp, mask=inside, other=0.0).to(ACC)
        dy = d_out * w if AFFINE else d_out
        if HAS_U or AFFINE:
            x = tl.load(X + b * s_xb + c * s_xc + p * s_xp, mask=x_mask, other=0.0).to(ACC)
        if (HAS_U and SHIFT_FIRST) or AFFINE:
            mu = _load_b(MU, b, j, p, s_mb, s_mc, s_mp, is_b, pair_j, pair_mask, ROWS, COLS, PAIRS).to(ACC)
        if HAS_U:
            u = _load_b(U, b, j, p, s_ub, s_uc, s_up, is_b, pair_j, pair_mask, ROWS, COLS, PAIRS).to(ACC)
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
            _store_b(
                DU,
                du.to(DU.dtype.element_ty),
                b,
                j,
                p,
                s_dub,
                s_duc,
                is_b,
                pair_j,
                pair_mask,
                start_parity,
                ROWS,
                COLS,
                PAIRS,
            )
        else:
            if AFFINE:
                y_b = x + mu
            dx = dy
            dmu = dy
        tl.store(DX + b * s_gb + c * s_gc + p * s_gp, dx.to(DX.dtype.element_ty), mask=inside)
        _store_b(
            DMU,
            dmu.to(DMU.dtype.element_ty),
            b,
            j,
            p,
            s_dmb,
            s_dmc,
            is_b,
            pair_j,
            pair_mask,
            start_parity,
            ROWS,
            COLS,
            PAIRS,
        )
        if AFFINE:
            chunk_dz, chunk_d = _affine_sums(inside, d_out, tl.where(is_b, y_b, x), VECTOR)
            sum_dz += chunk_dz
            sum_d += chunk_d
    if AFFINE:
        _store_affine_partials(AFF_PART, pid, sum_dz, sum_d, ROWS, COLS, VECTOR)


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
    N_CB,
    N_PB,
    START,
    param,
    start_parity,
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
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
    CHUNKS: tl.constexpr,
    VECTOR: tl.constexpr,
    ROWS_DIVIDE_C: tl.constexpr,
    PAIRS: tl.constexpr,
):
    """Gradients of the generation direction, recomputing x_b. ``x_b = (y_b - mu) / s``:
    dy_b = dx_b / s, dmu = -dx_b / s, du = -d(log s)/du * (dx_b * x_b + dlogdet[b]); SHIFT_FIRST
    ``x_b = y_b / s - mu``: dy_b = dx_b / s, dmu = -dx_b, du = -d(log s)/du * (dx_b * y_b / s +
    dlogdet[b]); dy_a = dx_a. With AFFINE as in the density direction's backward."""
    pid = tl.program_id(0)
    b, c, _, on_channel, _, _, _, _, _ = _tile(
        pid, 0, C, CB, P, N_CB, N_PB, START, STRIDE, ROWS, COLS, CHUNKS, VECTOR, PAIRS, False
    )
    if AFFINE:
        w = _per_channel(AFF, c, on_channel, 0.0, ROWS, COLS, VECTOR, ROWS_DIVIDE_C)
        N: tl.constexpr = COLS if VECTOR else ROWS
        sum_dz = tl.zeros((N,), ACC)
        sum_d = tl.zeros((N,), ACC)
    if HAS_U:
        g = tl.load(DLOGDET + b).to(ACC)
    for chunk in tl.static_range(CHUNKS):
        b, c, p, on_channel, inside, is_b, j, pair_j, pair_mask = _tile(
            pid, chunk, C, CB, P, N_CB, N_PB, START, STRIDE, ROWS, COLS, CHUNKS, VECTOR, PAIRS, False
        )
        y_mask = inside if AFFINE or PAIRS else is_b  # y_a is needed with AFFINE; PAIRS loads whole pairs
        d_out = tl.load(DX + b * s_gb + c * s_gc + p * s_gp, mask=inside, other=0.0).to(ACC)
        dx = d_out * w if AFFINE else d_out
        if HAS_U or AFFINE:
            y = tl.load(Y + b * s_yb + c * s_yc + p * s_yp, mask=y_mask, other=0.0).to(ACC)
        if (HAS_U and not SHIFT_FIRST) or AFFINE:
            mu = _load_b(MU, b, j, p, s_mb, s_mc, s_mp, is_b, pair_j, pair_mask, ROWS, COLS, PAIRS).to(ACC)
        if HAS_U:
            u = _load_b(U, b, j, p, s_ub, s_uc, s_up, is_b, pair_j, pair_mask, ROWS, COLS, PAIRS).to(ACC)
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
            _store_b(
                DU,
                du.to(DU.dtype.element_ty),
                b,
                j,
                p,
                s_dub,
                s_duc,
                is_b,
                pair_j,
                pair_mask,
                start_parity,
                ROWS,
                COLS,
                PAIRS,
            )
        else:
            if AFFINE:
                x_b = y - mu
            dy = dx
            dmu = -dx
        tl.store(DY + b * s_gb + c * s_gc + p * s_gp, dy.to(DY.dtype.element_ty), mask=inside)
        _store_b(
            DMU,
            dmu.to(DMU.dtype.element_ty),
            b,
            j,
            p,
            s_dmb,
            s_dmc,
            is_b,
            pair_j,
            pair_mask,
            start_parity,
            ROWS,
            COLS,
            PAIRS,
        )
        if AFFINE:
            chunk_dz, chunk_d = _affine_sums(inside, d_out, tl.where(is_b, x_b, y), VECTOR)
            sum_dz += chunk_dz
            sum_d += chunk_d
    if AFFINE:
        _store_affine_partials(AFF_PART, pid, sum_dz, sum_d, ROWS, COLS, VECTOR)


@dataclasses.dataclass(frozen=True)
class _Tiling:
    """How a launch covers ``[B, C, P]`` (module docstring): tile shape, blocks, warps."""

    vector: bool  # P == 1: one row of channels per program
    rows: int
    cols: int
    n_cb: int  # blocks of channels per sample
    n_pb: int  # blocks of pixels per channel block (1 for vectors)
    programs: int
    num_warps: int
    rows_divide_c: bool  # no image tile reaches beyond the last channel
    chunks: int = 1  # tiles per program (consecutive blocks of COLS pixels)

    @property
    def launch_options(self) -> dict:
        return dict(
            ROWS=self.rows,
            COLS=self.cols,
            CHUNKS=self.chunks,
            VECTOR=self.vector,
            ROWS_DIVIDE_C=self.rows_divide_c,
            num_warps=self.num_warps,
        )

    def per_channel(self, partial: torch.Tensor, channels: int) -> torch.Tensor:
        """The per-channel sums ``[2, C]`` of the kernels' per-channel partials (``partial_shape``)."""
        if self.vector:
            return partial.view(2, -1, self.n_cb * self.cols).sum(1)[:, :channels]
        sums = partial.view(-1, self.n_cb, self.n_pb, self.rows, 2).sum((0, 2)).flatten(0, 1)
        return sums[:channels].T

    @property
    def partial_shape(self) -> tuple[int, int, int]:
        """Shape of the per-channel partial sums of the backward with an affine."""
        return (2, self.programs, self.cols) if self.vector else (self.programs, self.rows, 2)


def _tiling(batch: int, channels: int, pixels: int, per_channel: bool = False) -> _Tiling:
    """Tiles of about TILE elements (16 per thread) over ``[batch, channels, pixels]`` (module docstring).
    Vectors take at least VECTOR_COLS channels per program (masked beyond C) on 1 to 4 warps, so that
    each thread still holds 16 of them. With ``per_channel`` (per-channel values read, an affine) the
    rows of an image tile divide C, so that no tile reaches beyond the last channel."""
    if pixels == 1:
        cols = _common.pow2_tile(channels, VECTOR_COLS, TILE)
        n_cb = triton.cdiv(channels, cols)
        return _Tiling(True, 1, cols, n_cb, 1, batch * n_cb, cols // VECTOR_COLS, False)
    rows = _common.pow2_tile(channels, 1, TILE // _common.pow2_tile(pixels, 1, MAX_COLS))
    if per_channel and channels % 16:  # C is not known to the compiler as a multiple of 16 (no masks)
        rows = min(rows, channels & -channels)  # the largest power of two dividing C
    cols = _common.pow2_tile(pixels, 1, TILE // rows)
    # Rows of 1 or 2 channels read per-channel values 32 or 64 bits at a time: more tiles per program
    # spread those reads (and the partial sums' stores) over more pixels.
    chunks = min(MAX_CHUNKS, triton.cdiv(pixels, cols)) if per_channel and rows < 4 else 1
    n_cb, n_pb = triton.cdiv(channels, rows), triton.cdiv(pixels, cols * chunks)
    return _Tiling(False, rows, cols, n_cb, n_pb, batch * n_cb * n_pb, 4, channels % rows == 0, chunks)


def _pairs(tiling: _Tiling, start: int, stride: int, b_only: bool) -> bool:
    """Whether mu and u are read as half-width tiles (vectors with a skip split, START 0 or 1)."""
    return tiling.vector and stride == 2 and start in (0, 1) and not b_only


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
    tiling = _tiling(batch, cb if b_only else channels, pixels, affine is not None)
    partial = _common.new_output((tiling.programs, tiling.rows), acc, x.device) if u is not None else logdet
    param, constexprs = _form_constexprs(form)
    _coupling_kernel[(tiling.programs,)](
        x,
        mu,
        u if u is not None else mu,
        affine[0] if affine is not None else mu,
        affine[1] if affine is not None else mu,
        out,
        partial,
        channels,
        cb,
        pixels,
        tiling.n_cb,
        tiling.n_pb,
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
        PAIRS=_pairs(tiling, start, stride, b_only),
        **tiling.launch_options,
        **constexprs,
    )
    return out, (partial.view(batch, -1).sum(1) if u is not None else logdet)


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
    tiling = _tiling(batch, channels, pixels, affine is not None)
    if affine is None:
        partial = grad_logdet
    else:  # per-channel partial sums of each tile
        partial = _common.new_output(tiling.partial_shape, acc, x.device)
    grad_logdet = grad_logdet.contiguous()
    param, constexprs = _form_constexprs(form)
    kernel = _coupling_inverse_backward_kernel if inverse else _coupling_forward_backward_kernel
    d_u_or_mu = d_u if d_u is not None else d_mu
    kernel[(tiling.programs,)](
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
        tiling.n_cb,
        tiling.n_pb,
        start,
        param,
        float(start % 2),
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
        PAIRS=_pairs(tiling, start, stride, False),
        **tiling.launch_options,
        **constexprs,
    )
    if affine is None:
        return d_in, d_mu, d_u, None
    return d_in, d_mu, d_u, tiling.per_channel(partial, channels).to(affine.dtype)
