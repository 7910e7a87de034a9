"""ActNorm: a per-channel affine map with a data-dependent init.

Density direction: y = x * exp(log_scale) + bias, logdet = (pixels per channel) * sum(log_scale).
Inverse: x = (y - bias) * exp(-log_scale). Works on images ``[B, C, H, W]`` and vectors ``[B, C]``.
The init sets the output on the init batch to zero mean and unit (unbiased) std per channel.
"""

from __future__ import annotations

import torch
from torch import nn

from fastflow.flows.base import Flow
from fastflow.nn import INIT_STD, STD_EPS
from fastflow.ops.actnorm import actnorm, actnorm_logdet


class ActNorm(Flow):
    """ActNorm over the channel dimension 1 of ``[B, C, *S]`` (``S`` empty for vectors)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.log_scale = nn.Parameter(torch.randn(num_channels) * INIT_STD)
        self.bias = nn.Parameter(torch.randn(num_channels) * INIT_STD)

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"ActNorm expects [B, {self.num_channels}, ...], got shape {tuple(x.shape)}")

    def as_actnorm(self, num_channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (self.log_scale, self.bias) if num_channels == self.num_channels else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        return actnorm(x, self.log_scale, self.bias)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(y)
        x = (y - self._view(self.bias, y)) * self._view((-self.log_scale).exp(), y)
        return x, -actnorm_logdet(y, self.log_scale)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        y, _ = self.forward(x)
        dims = [0] + list(range(2, x.dim()))
        mean = y.mean(dim=dims)
        std = y.std(dim=dims) if y.numel() > y.shape[1] else torch.ones_like(mean)
        inv = 1.0 / (std + STD_EPS)
        self.log_scale.add_(inv.log().to(self.log_scale.dtype))
        self.bias.copy_((self.bias - mean) * inv)
        return self.forward(x)
