"""Triton kernels of the conditional affine coupling (and its additive variant).

Density direction (x -> y), with x, y viewed as ``[B, C, P]`` (P = pixels, 1 for vectors) and
mu, u as ``[B, Cb, P]``:

    y[:, c] = s * x[:, c] + mu[:, j]   if c = start + j * stride (a transformed channel, j < Cb)
    y[:, c] = x[:, c]                  otherwise (a conditioning channel, copied)
    s = 1 + alpha * tanh(u / 2) = (1 - alpha) + 2 * alpha * sigmoid(u),   logdet[b] = sum log s

``(start, stride)`` encodes all four split patterns without any split/cat copy: continuous/up is
``(C - Cb, 1)``, continuous/down ``(0, 1)``, skip/up ``(1, 2)`` and skip/down ``(0, 2)``.
Generation direction (y -> x): ``x_b = (y_b - mu) / s``, ``logdet = -sum log s``.

Every program handles ``BLOCK`` consecutive elements of one sample's ``[C, P]`` plane, so it writes
all of y (copied and transformed channels alike) in one pass and stores one partial sum of log s;
the per-sample logdet is the sum of a sample's partials (a tiny torch sum, deterministic, no
atomics). The backward kernels recompute s and d(log s)/du from u instead of storing them.
All arithmetic is in float32 (float64 for float64 inputs); outputs are stored in their input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastflow.kernels import _common

MIN_BLOCK, MAX_BLOCK = 16, 1024  # elements per program


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
def _scale_terms(u, alpha, ALPHA_ONE: tl.constexpr):
    """``s``, ``log s`` and ``d(log s)/du`` for ``s = (1 - alpha) + 2 alpha sigmoid(u)``, finite for any u.

    With ``alpha == 1`` the log is ``log 2 - softplus(-u) = min(u, 0) + log(2 / (1 + exp(-|u|)))``
    and the derivative ``sigmoid(-u)``. ``alpha`` arrives as a float32 scalar.
    """
    e = tl.exp(-tl.abs(u))  # in (0, 1]: never overflows
    sig_pos = tl.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    sig_neg = tl.where(u >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
    if ALPHA_ONE:
        s = 2.0 * sig_pos
        log_s = tl.minimum(u, 0.0) + tl.log(2.0 / (1.0 + e))
        dlog_s = sig_neg
    else:
        s = (1.0 - alpha) + 2.0 * alpha * sig_pos
        log_s = tl.log(s)
        dlog_s = 2.0 * alpha * sig_pos * sig_neg / s
    return s, log_s, dlog_s


@triton.jit
def _coupling_kernel(
    X,
    MU,
    U,
    Y,
    LOGDET_PART,
    C,
    CB,
    P,
    N_BLOCKS,
    START,
    alpha,
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
    ALPHA_ONE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One block of one sample, X -> Y: the density direction (y_b = s x_b + mu, partial sum of
    log s per program) or, with INVERSE, the generation direction (x_b = (y_b - mu) / s, -log s)."""
    pid = tl.program_id(0)
    b, c, p, inside, is_b, j = _block_elements(pid, C, CB, P, N_BLOCKS, START, STRIDE, BLOCK)
    x = tl.load(X + b * s_xb + c * s_xc + p * s_xp, mask=inside, other=0.0).to(ACC)
    mu = tl.load(MU + b * s_mb + j * s_mc + p * s_mp, mask=is_b, other=0.0).to(ACC)
    if HAS_U:
        u = tl.load(U + b * s_ub + j * s_uc + p * s_up, mask=is_b, other=0.0).to(ACC)
        s, log_s, _ = _scale_terms(u, alpha, ALPHA_ONE)
        log_det = tl.sum(tl.where(is_b, log_s, 0.0), axis=0)
        if INVERSE:
            y = tl.where(is_b, (x - mu) / tl.where(is_b, s, 1.0), x)
            log_det = -log_det
        else:
            y = tl.where(is_b, s * x + mu, x)
        tl.store(LOGDET_PART + pid, log_det)
    else:
        y = tl.where(is_b, x - mu, x) if INVERSE else tl.where(is_b, x + mu, x)
    tl.store(Y + b * s_yb + c * s_yc + p * s_yp, y.to(Y.dtype.element_ty), mask=inside)


@triton.jit
def _coupling_forward_backward_kernel(
    X,
    U,
    DY,
    DLOGDET,
    DX,
    DMU,
    DU,
    C,
    CB,
    P,
    N_BLOCKS,
    START,
    alpha,
    s_xb,
    s_xc,
    s_xp,
    s_ub,
    s_uc,
    s_up,
    s_gb,
    s_gc,
    s_gp,
    STRIDE: tl.constexpr,
    HAS_U: tl.constexpr,
    ALPHA_ONE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Gradients of the density direction: dx_b = s dy_b, dx_a = dy_a, dmu = dy_b,
    du = d(log s)/du * (dy_b * x_b * s + dlogdet[b]).  DY, DX ``[B, C, P]`` and DMU, DU
    ``[B, Cb, P]`` are contiguous; X and U are read through their strides."""
    pid = tl.program_id(0)
    b, c, p, inside, is_b, j = _block_elements(pid, C, CB, P, N_BLOCKS, START, STRIDE, BLOCK)
    dy = tl.load(DY + b * s_gb + c * s_gc + p * s_gp, mask=inside, other=0.0).to(ACC)
    small = b * CB * P + j * P + p
    if HAS_U:
        x = tl.load(X + b * s_xb + c * s_xc + p * s_xp, mask=is_b, other=0.0).to(ACC)
        u = tl.load(U + b * s_ub + j * s_uc + p * s_up, mask=is_b, other=0.0).to(ACC)
        g = tl.load(DLOGDET + b).to(ACC)
        s, _, dlog_s = _scale_terms(u, alpha, ALPHA_ONE)
        dx = tl.where(is_b, s * dy, dy)
        du = dlog_s * (dy * x * s + g)
        tl.store(DU + small, du.to(DU.dtype.element_ty), mask=is_b)
    else:
        dx = dy
    tl.store(DX + b * s_gb + c * s_gc + p * s_gp, dx.to(DX.dtype.element_ty), mask=inside)
    tl.store(DMU + small, dy.to(DMU.dtype.element_ty), mask=is_b)


@triton.jit
def _coupling_inverse_backward_kernel(
    Y,
    MU,
    U,
    DX,
    DLOGDET,
    DY,
    DMU,
    DU,
    C,
    CB,
    P,
    N_BLOCKS,
    START,
    alpha,
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
    STRIDE: tl.constexpr,
    HAS_U: tl.constexpr,
    ALPHA_ONE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Gradients of the generation direction, recomputing x_b = (y_b - mu) / s:
    dy_b = dx_b / s, dy_a = dx_a, dmu = -dx_b / s, du = -d(log s)/du * (dx_b * x_b + dlogdet[b])."""
    pid = tl.program_id(0)
    b, c, p, inside, is_b, j = _block_elements(pid, C, CB, P, N_BLOCKS, START, STRIDE, BLOCK)
    dx = tl.load(DX + b * s_gb + c * s_gc + p * s_gp, mask=inside, other=0.0).to(ACC)
    small = b * CB * P + j * P + p
    if HAS_U:
        y = tl.load(Y + b * s_yb + c * s_yc + p * s_yp, mask=is_b, other=0.0).to(ACC)
        mu = tl.load(MU + b * s_mb + j * s_mc + p * s_mp, mask=is_b, other=0.0).to(ACC)
        u = tl.load(U + b * s_ub + j * s_uc + p * s_up, mask=is_b, other=0.0).to(ACC)
        g = tl.load(DLOGDET + b).to(ACC)
        s, _, dlog_s = _scale_terms(u, alpha, ALPHA_ONE)
        s = tl.where(is_b, s, 1.0)
        dy = tl.where(is_b, dx / s, dx)
        du = -dlog_s * (dx * (y - mu) / s + g)
        tl.store(DU + small, du.to(DU.dtype.element_ty), mask=is_b)
    else:
        dy = dx
    tl.store(DY + b * s_gb + c * s_gc + p * s_gp, dy.to(DY.dtype.element_ty), mask=inside)
    tl.store(DMU + small, (-dy).to(DMU.dtype.element_ty), mask=is_b)


def _grid(batch: int, plane: int, block: int) -> tuple[int, tuple[int]]:
    n_blocks = triton.cdiv(plane, block)
    return n_blocks, (batch * n_blocks,)


def coupling_apply(
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    start: int,
    stride: int,
    alpha: float,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction of the coupling on ``[B, C, P]`` views.

    ``inverse=False``: x -> (y, logdet); ``inverse=True``: x plays y and the result is
    (x, -sum log s). x ``[B, C, P]``, mu and u ``[B, Cb, P]`` (any strides); returns a contiguous
    ``[B, C, P]`` tensor of x's dtype and a logdet ``[B]`` in float32 (float64 for float64 input).
    """
    batch, channels, pixels = x.shape
    acc = _common.acc_dtype(x, mu, u)
    out = _common.new_output((batch, channels, pixels), x.dtype, x.device)
    zeros = torch.zeros(batch, dtype=acc, device=x.device)
    if out.numel() == 0:
        return out, zeros
    block = _block_size(channels * pixels)
    n_blocks, grid = _grid(batch, channels * pixels, block)
    partial = _common.new_output((batch, n_blocks), acc, x.device) if u is not None else zeros
    _coupling_kernel[grid](
        x,
        mu,
        u if u is not None else mu,
        out,
        partial,
        channels,
        mu.shape[1],
        pixels,
        n_blocks,
        start,
        float(alpha),
        *x.stride(),
        *mu.stride(),
        *_strides(u),
        *out.stride(),
        INVERSE=inverse,
        STRIDE=stride,
        HAS_U=u is not None,
        ALPHA_ONE=alpha == 1.0,
        ACC=_common.tl_dtype(acc),
        BLOCK=block,
    )
    return out, (partial.sum(1) if u is not None else zeros)


def coupling_backward(
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    grad_out: torch.Tensor,
    grad_logdet: torch.Tensor,
    start: int,
    stride: int,
    alpha: float,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`coupling_apply` with respect to its input, mu and u.

    ``x``, ``mu``, ``u`` are the inputs of that call (for ``inverse=True`` ``x`` is y); grad_out
    ``[B, C, P]``, grad_logdet ``[B]``. Returns contiguous (d input ``[B, C, P]``, dmu and du
    ``[B, Cb, P]``, du None for the additive coupling), each in its input's dtype.
    """
    batch, channels, pixels = x.shape
    cb = mu.shape[1]
    acc = _common.acc_dtype(x, mu, u)
    grad_out = grad_out.contiguous()
    d_in = _common.new_output((batch, channels, pixels), x.dtype, x.device)
    d_mu = _common.new_output((batch, cb, pixels), mu.dtype, x.device)
    d_u = _common.new_output((batch, cb, pixels), u.dtype, x.device) if u is not None else None
    if d_in.numel() == 0:
        return d_in, d_mu, d_u
    block = _block_size(channels * pixels)
    n_blocks, grid = _grid(batch, channels * pixels, block)
    grad_logdet = grad_logdet.contiguous()
    u_or_mu = u if u is not None else mu
    common = dict(STRIDE=stride, HAS_U=u is not None, ALPHA_ONE=alpha == 1.0, ACC=_common.tl_dtype(acc), BLOCK=block)
    sizes = (channels, cb, pixels, n_blocks, start, float(alpha))
    if inverse:
        _coupling_inverse_backward_kernel[grid](
            x,
            mu,
            u_or_mu,
            grad_out,
            grad_logdet,
            d_in,
            d_mu,
            d_u if d_u is not None else d_mu,
            *sizes,
            *x.stride(),
            *mu.stride(),
            *_strides(u),
            *grad_out.stride(),
            **common,
        )
    else:
        _coupling_forward_backward_kernel[grid](
            x,
            u_or_mu,
            grad_out,
            grad_logdet,
            d_in,
            d_mu,
            d_u if d_u is not None else d_mu,
            *sizes,
            *x.stride(),
            *_strides(u),
            *grad_out.stride(),
            **common,
        )
    return d_in, d_mu, d_u
