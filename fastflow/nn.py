"""Weight-normalised layers used at the ends of the conditioning networks and the encoder.

weight = g * v / ||v|| with the norm taken per output unit (:func:`fastflow.ops.weight_norm.weight_norm`,
run with the layer's ``backend``, which ``set_backend`` sets). ``initialize(x, init_scale)`` is the
data-dependent init: it sets g and the bias so that the outputs on ``x`` have zero mean and standard
deviation ``init_scale`` per output unit (``init_scale=0`` makes the layer output exactly zero).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fastflow.ops.weight_norm import normalised_rows, weight_norm

INIT_STD = 0.05  # std of random initial weights: weight-normalised directions, actnorm, Glow's coupling convs
STD_EPS = 1e-6  # added to a standard deviation before the data-dependent inits divide by it


class WeightNormConv2d(nn.Module):
    """Conv2d ``[B, Cin, H, W] -> [B, Cout, H', W']`` with a weight-normalised kernel and a bias."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, zero_init: bool = False
    ) -> None:
        super().__init__()
        self.padding = padding
        self.v = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) * INIT_STD)
        self.g = nn.Parameter(torch.zeros(out_channels) if zero_init else torch.ones(out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.backend = "auto"

    def weight(self) -> torch.Tensor:
        return weight_norm(self.v, self.g, backend=self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, init_scale: float) -> None:
        out = F.conv2d(x, normalised_rows(self.v), padding=self.padding)
        mean = out.mean(dim=(0, 2, 3))
        std = out.std(dim=(0, 2, 3)) if out.numel() > out.shape[1] else torch.ones_like(mean)
        inv = init_scale / (std + STD_EPS)
        self.g.copy_(inv)
        self.bias.copy_(-mean * inv)


class WeightNormLinear(nn.Module):
    """Linear ``[B, Fin] -> [B, Fout]`` with a weight-normalised matrix and a bias."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.randn(out_features, in_features) * INIT_STD)
        self.g = nn.Parameter(torch.zeros(out_features) if zero_init else torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.backend = "auto"

    def weight(self) -> torch.Tensor:
        return weight_norm(self.v, self.g, backend=self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, init_scale: float) -> None:
        out = F.linear(x, normalised_rows(self.v))
        mean = out.mean(dim=0)
        std = out.std(dim=0) if out.shape[0] > 1 else torch.ones_like(mean)
        inv = init_scale / (std + STD_EPS)
        self.g.copy_(inv)
        self.bias.copy_(-mean * inv)
