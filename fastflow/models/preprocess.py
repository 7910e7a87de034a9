"""n-bit preprocessing, uniform dequantisation and the bits/dim bookkeeping.

Pixels p in [0, 255] are reduced to n bits (``floor(p / 2**(8 - n))``, B = 2**n bins), dequantised
with u ~ U[0, 1) and mapped to [-1, 1]: ``x = 2 (p + u) / B - 1``. The density of x relates to that of
the bin-unit variable by ``D log(B / 2)`` nats (``D = C H W``), which :func:`bits_per_dim` adds.
"""

from __future__ import annotations

import math

import torch

from fastflow.errors import UsageError


def check_images(x: torch.Tensor, channels: int, size: int) -> None:
    """Raise ValueError unless ``x`` is a non-empty ``[B, channels, size, size]`` batch of finite pixel values."""
    expected = f"[B, {channels}, {size}, {size}]"
    if x.dim() != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise UsageError(f"expected images of shape {expected}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise UsageError(f"expected a non-empty batch of images {expected} with B >= 1, got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise TypeError(f"images must be uint8 or float pixel values in [0, 255], got {x.dtype}")
        if not torch.isfinite(x).all():
            raise UsageError("images contain NaN or infinite values")
        if x.numel() and (x.min() < 0 or x.max() > 255):
            raise UsageError("float images must hold pixel values in [0, 255]")


def to_bins(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """uint8 (or float) pixels -> integer bin indices in [0, 2**n_bits) as float32."""
    p = x.float() if x.dtype == torch.uint8 else x.float().floor()
    if n_bits < 8:
        p = torch.floor(p / 2 ** (8 - n_bits))
    return p


def dequantize(bins: torch.Tensor, n_bits: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bins + U[0, 1) noise mapped to [-1, 1]."""
    noise = torch.rand(bins.shape, generator=generator, device=bins.device if generator is None else generator.device)
    return 2.0 * (bins + noise.to(bins.device)) / 2**n_bits - 1.0


def bin_centres(bins: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Deterministic dequantisation at the bin centres (encode, reconstruct)."""
    return 2.0 * (bins + 0.5) / 2**n_bits - 1.0


def bins_to_unit(bins: torch.Tensor, n_bits: int) -> torch.Tensor:
    """The encoder's input: bins mapped to [-1, 1) with no noise."""
    return 2.0 * bins / 2**n_bits - 1.0


def postprocess(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """[-1, 1] -> uint8 pixels: back to bins, floor, scale to 8 bits, clamp. NaN and -inf -> 0, +inf -> 255
    (callers decide whether non-finite values are an error: ``ImageFlowModel.decode``)."""
    bins = 2**n_bits
    x = torch.nan_to_num(x.float(), nan=-1.0, posinf=1.0, neginf=-1.0)
    p = torch.floor((x + 1.0) * 0.5 * bins).clamp(0, bins - 1) * (256 // bins)
    return p.clamp(0, 255).to(torch.uint8)


def bits_per_dim(nll_nats: torch.Tensor, num_dims: int, n_bits: int) -> torch.Tensor:
    """Per-image bits/dim from the negative log-density of x in [-1, 1] (``[B]`` -> ``[B]``)."""
    return (nll_nats + num_dims * math.log(2**n_bits / 2)) / (num_dims * math.log(2))


def standard_normal_log_prob(v: torch.Tensor) -> torch.Tensor:
    """log N(v; 0, I) summed per sample: ``[B, ...] -> [B]``."""
    v = v.flatten(1)
    return -0.5 * (v.pow(2).sum(1) + v.shape[1] * math.log(2 * math.pi))
