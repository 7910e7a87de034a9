"""ActNorm followed by an invertible 1x1 convolution, as one per-pixel affine map.

Density direction (x to y), per pixel:  y = W (exp(log_scale) * x + bias),
logdet = H * W * (sum(log_scale) + log|det W|)  (the same for every sample).
Inverse (y to x):                      x = exp(-log_scale) * (W^-1 y) - bias * exp(-log_scale)... i.e.
x = (W^-1 y - bias) * exp(-log_scale).

Shapes: x, y ``[B, C, H, W]``; log_scale, bias ``[C]``; weight, weight_inverse ``[C, C]``;
logdet ``[B]``. ``log_abs_det`` (log|det W|, a 0-d tensor) may be passed in when the caller has
computed it already (the models get all of theirs in one batched call); otherwise it is computed
here with ``fastflow.ops.batched_slogdet``.
"""
from __future__ import annotations

import torch

from fastflow.ops._backend import resolve_backend
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


def _logdet(x: torch.Tensor, log_scale: torch.Tensor, log_abs_det: torch.Tensor | None,
            weight: torch.Tensor) -> torch.Tensor:
    if log_abs_det is None:
        log_abs_det = batched_slogdet(weight.unsqueeze(0))[1][0]
    pixels = x.shape[2] * x.shape[3]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    per_sample = pixels * (log_scale.to(dtype).sum() + log_abs_det.to(dtype))
    return per_sample.expand(x.shape[0])


def actnorm_conv1x1_reference(
    x: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Plain-PyTorch density direction (without the logdet)."""
    h = x * log_scale.exp().view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    return torch.nn.functional.conv2d(h, weight.view(*weight.shape, 1, 1))


def actnorm_conv1x1_inverse_reference(
    y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor, weight_inverse: torch.Tensor
) -> torch.Tensor:
    """Plain-PyTorch generation direction (without the logdet)."""
    h = torch.nn.functional.conv2d(y, weight_inverse.view(*weight_inverse.shape, 1, 1))
    return (h - bias.view(1, -1, 1, 1)) * (-log_scale).exp().view(1, -1, 1, 1)


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
    if resolve_backend(backend, x) == "triton":
        from fastflow.ops._actnorm_conv1x1_triton import actnorm_conv1x1_triton

        y = actnorm_conv1x1_triton(x, log_scale, bias, weight)
    else:
        y = actnorm_conv1x1_reference(x, log_scale, bias, weight)
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
    if resolve_backend(backend, y) == "triton":
        from fastflow.ops._actnorm_conv1x1_triton import actnorm_conv1x1_inverse_triton

        x = actnorm_conv1x1_inverse_triton(y, log_scale, bias, weight_inverse)
    else:
        x = actnorm_conv1x1_inverse_reference(y, log_scale, bias, weight_inverse)
    return x, -_logdet(y, log_scale, log_abs_det, weight)
