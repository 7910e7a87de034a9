"""ActNorm followed by an invertible 1x1 convolution, as one per-pixel affine map.

Density direction (x to y), per pixel:  y = W (exp(log_scale) * x + bias),
logdet = H * W * (sum(log_scale) + log|det W|)  (the same for every sample).
Inverse (y to x):                      x = (W^-1 y - bias) * exp(-log_scale).

Shapes: x, y ``[B, C, H, W]``; log_scale, bias ``[C]``; weight, weight_inverse ``[C, C]``;
logdet ``[B]``. ``log_abs_det`` (log|det W|, a 0-d tensor) may be passed in when the caller has
computed it already (the models get all of theirs in one batched call); otherwise it is computed
here with ``fastflow.ops.batched_slogdet``.

The ``"cpu"`` and ``"triton"`` implementations fold the actnorm into the matrix, so each direction is
one per-sample GEMM ``y[b] = M x[b] + c`` over pixels: ``"cpu"`` with one ``torch.baddbmm``
(:func:`fastflow.ops.cpu.actnorm_conv1x1.pixel_affine`), ``"triton"`` with :class:`PixelAffineFunction`
(kernels in ``fastflow.kernels.actnorm_conv1x1``). The literal two-pass definitions ``*_reference``
(actnorm, then ``conv2d``) are the ``"reference"`` implementation and the tests' yardstick.

- forward: ``M = W diag(e)``, ``c = W b`` with ``e = exp(log_scale)``;
- inverse: ``M = diag(1/e) W^-1``, ``c = -b / e``.

M and c are built with differentiable C x C torch ops (:func:`forward_map`, :func:`inverse_map`),
so autograd turns the kernel gradients
``dM = G = sum_{b,p} dy x^T`` and ``dc = r = sum_{b,p} dy`` into the parameter gradients; for the
forward direction that is ``dW = G diag(e) + r b^T``, ``d bias = W^T r`` and
``d log_scale = e * (W * G).sum(0)``, and ``dx = M^T dy``. The intermediate ``h = e x + b`` is never
materialised and only x is saved for the backward. float16/bfloat16 x is computed in float32
against float32 parameters; y comes back in x's dtype.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from fastflow.ops import backends
from fastflow.ops._launcher import accumulation_dtype, launcher
from fastflow.ops.cpu import actnorm_conv1x1 as cpu
from fastflow.ops.slogdet import batched_inverse, batched_slogdet


def _check(x: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"actnorm_conv1x1 expects x of shape [B, C, H, W], got {tuple(x.shape)}")
    c = x.shape[1]
    if log_scale.shape != (c,) or bias.shape != (c,):
        raise ValueError(
            f"log_scale and bias must have shape ({c},), got {tuple(log_scale.shape)} and {tuple(bias.shape)}"
        )
    if weight.shape != (c, c):
        raise ValueError(f"weight must have shape ({c}, {c}), got {tuple(weight.shape)}")
    devices = {t.device for t in (x, log_scale, bias, weight)}
    if len(devices) > 1:
        raise ValueError(f"x and the parameters must be on one device, got {sorted(map(str, devices))}")


def _logdet(
    x: torch.Tensor, log_scale: torch.Tensor, log_abs_det: torch.Tensor | None, weight: torch.Tensor
) -> torch.Tensor:
    if log_abs_det is None:
        log_abs_det = batched_slogdet(weight.unsqueeze(0))[1][0]
    pixels = x.shape[2] * x.shape[3]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    per_sample = pixels * (log_scale.to(dtype).sum() + log_abs_det.to(dtype))
    return per_sample.expand(x.shape[0])


def actnorm_conv1x1_reference(
    x: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Plain-PyTorch density direction (without the logdet); y in x's dtype."""
    h = x * log_scale.exp().view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    return torch.nn.functional.conv2d(h, weight.view(*weight.shape, 1, 1)).to(x.dtype)


def actnorm_conv1x1_inverse_reference(
    y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor, weight_inverse: torch.Tensor
) -> torch.Tensor:
    """Plain-PyTorch generation direction (without the logdet); x in y's dtype."""
    h = torch.nn.functional.conv2d(y.to(weight_inverse.dtype), weight_inverse.view(*weight_inverse.shape, 1, 1))
    return ((h - bias.view(1, -1, 1, 1)) * (-log_scale).exp().view(1, -1, 1, 1)).to(y.dtype)


@launcher("pixel_affine", lambda x, matrix, bias: x.new_empty((x.shape[0], matrix.shape[0], x.shape[2])))
def triton_pixel_affine(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``fastflow.kernels.actnorm_conv1x1.pixel_affine``: x ``[B, C_in, P]`` -> ``[B, C_out, P]``."""
    from fastflow.kernels.actnorm_conv1x1 import pixel_affine

    return pixel_affine(x, matrix, bias)


def _fake_outer_sum(dy, x):
    acc = accumulation_dtype(dy, x)
    return dy.new_empty((dy.shape[1], x.shape[1]), dtype=acc), dy.new_empty(dy.shape[1], dtype=acc)


@launcher("outer_sum", _fake_outer_sum)
def triton_outer_sum(dy: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``fastflow.kernels.actnorm_conv1x1.outer_sum``: ``(sum_{b,p} dy x^T, sum_{b,p} dy)``."""
    from fastflow.kernels.actnorm_conv1x1 import outer_sum

    return outer_sum(dy, x)


class PixelAffineFunction(torch.autograd.Function):
    """``y[b] = matrix @ x[b] + bias`` per pixel, for x ``[B, C_in, P]``, matrix ``[C_out, C_in]``,
    bias ``[C_out]``; returns ``[B, C_out, P]``. Saves x and the matrix only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, matrix)
        ctx.bias_dtype = bias.dtype
        return triton_pixel_affine(x, matrix, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        x, matrix = ctx.saved_tensors
        grad_x = triton_pixel_affine(grad_y, matrix.t(), None) if ctx.needs_input_grad[0] else None
        grad_matrix = grad_bias = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            g, r = triton_outer_sum(grad_y, x)
            grad_matrix, grad_bias = g.to(matrix.dtype), r.to(ctx.bias_dtype)
        return grad_x, grad_matrix, grad_bias


def forward_map(log_scale: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The density direction as ``y = M x + c`` per pixel: ``(M = W diag(e^ls) [C, C], c = W b [C])``."""
    return weight * log_scale.exp(), weight @ bias


def inverse_map(
    log_scale: torch.Tensor, bias: torch.Tensor, weight_inverse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The generation direction as ``x = M y + c``: ``(M = diag(e^-ls) W^-1, c = -b e^-ls)``."""
    inv_scale = (-log_scale).exp()
    return inv_scale[:, None] * weight_inverse, -bias * inv_scale


def pixel_affine_triton(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """:class:`PixelAffineFunction` on x ``[B, C, H, W]``; the result is contiguous NCHW."""
    batch, channels, height, width = x.shape
    y = PixelAffineFunction.apply(x.reshape(batch, channels, height * width), matrix, bias)
    return y.view(batch, matrix.shape[0], height, width)


def _pixel_affine(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor, implementation: str) -> torch.Tensor:
    if implementation == "triton":
        return pixel_affine_triton(x, matrix, bias)
    return cpu.pixel_affine(x, matrix, bias)


def actnorm_conv1x1(
    x: torch.Tensor,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor,
    log_abs_det: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density direction x -> y; returns ``(y [B, C, H, W], logdet [B])``."""
    _check(x, log_scale, bias, weight)
    implementation = backends.select("actnorm_conv1x1", backend, x)
    if implementation == "reference":
        if log_abs_det is None:
            log_abs_det = torch.linalg.slogdet(weight)[1]
        return actnorm_conv1x1_reference(x, log_scale, bias, weight), _logdet(x, log_scale, log_abs_det, weight)
    y = _pixel_affine(x, *forward_map(log_scale, bias, weight), implementation)
    return y, _logdet(x, log_scale, log_abs_det, weight)


def actnorm_conv1x1_inverse(
    y: torch.Tensor,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor,
    weight_inverse: torch.Tensor | None = None,
    log_abs_det: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generation direction y -> x; returns ``(x [B, C, H, W], logdet [B])`` with logdet the
    negative of the forward one. ``weight_inverse`` is computed from ``weight`` when not given."""
    _check(y, log_scale, bias, weight)
    if weight_inverse is None:
        weight_inverse = batched_inverse(weight.unsqueeze(0))[0]
    elif weight_inverse.shape != weight.shape:
        raise ValueError(f"weight_inverse must have shape {tuple(weight.shape)}, got {tuple(weight_inverse.shape)}")
    implementation = backends.select("actnorm_conv1x1", backend, y)
    if implementation == "reference":
        x = actnorm_conv1x1_inverse_reference(y, log_scale, bias, weight_inverse)
    else:
        x = _pixel_affine(y, *inverse_map(log_scale, bias, weight_inverse), implementation)
    return x, -_logdet(y, log_scale, log_abs_det, weight)
