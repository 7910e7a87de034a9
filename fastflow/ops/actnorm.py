"""ActNorm's density direction, the one home of its formula (plain PyTorch).

``y = x * exp(log_scale) + bias`` per channel (dim 1 of ``[B, C, *S]``), ``logdet = P * sum(log_scale)``
per sample with P the pixels per channel (1 for vectors). :class:`fastflow.flows.ActNorm` computes it
here, and the fused coupling folds it into its kernels' stores (``affine_coupling(..., actnorm=)``).
"""

from __future__ import annotations

import math

import torch


def logdet_dtype(x: torch.Tensor) -> torch.dtype:
    """Logdets are float32, or float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def actnorm_logdet(x: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """``P * sum(log_scale)`` for each of x's ``B`` samples, ``[B]`` in :func:`logdet_dtype`."""
    pixels = math.prod(x.shape[2:])
    return (pixels * log_scale.to(logdet_dtype(x)).sum()).expand(x.shape[0])


def actnorm(x: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x * exp(log_scale) + bias, logdet [B])`` for x ``[B, C, *S]`` and log_scale, bias ``[C]``."""
    shape = (1, -1, *([1] * (x.dim() - 2)))
    return x * log_scale.exp().view(shape) + bias.view(shape), actnorm_logdet(x, log_scale)
