"""The ResNet compression encoder q(z | x) of Wolf (a diagonal Gaussian).

``[B, 3, H, W]`` (x in [-1, 1), no dequantisation noise) -> mu, log-variance ``[B, dz]``. Per level:
a stride-1 and a stride-2 ResNet block (conv3x3-BN-ELU-conv3x3-BN + residual, ELU) down to 4x4, then
a 1x1 conv to ``out_planes`` channels, ELU, flatten, and a weight-normed linear to ``2 dz`` whose
data-dependent init (scale 0.01) makes q start close to N(0, I).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fastflow.errors import UsageError
from fastflow.nn import WeightNormLinear

CODE_SIDE = 4  # the encoder halves the image down to CODE_SIDE x CODE_SIDE before its linear head


class ResNetBlock(nn.Module):
    """conv3x3 -> BN -> ELU -> conv3x3 -> BN, plus a (projected) residual, then ELU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn2(self.conv2(F.elu(self.bn1(self.conv1(x)))))
        residual = x if self.shortcut is None else self.shortcut(x)
        return F.elu(h + residual)


class CompressionEncoder(nn.Module):
    """x ``[B, C, H, W]`` -> (mu, logvar) ``[B, z_dim]``; H = W = 4 * 2**levels."""

    def __init__(
        self, in_channels: int, image_size: int, levels: int, hidden_planes: list, out_planes: int, z_dim: int
    ) -> None:
        super().__init__()
        if len(hidden_planes) != levels:
            raise UsageError(f"encoder needs one hidden_planes entry per level ({levels}), got {hidden_planes}")
        if image_size != CODE_SIDE * 2**levels:
            raise UsageError(
                f"the encoder halves the image {levels} times down to {CODE_SIDE}x{CODE_SIDE}, so it needs image_size "
                f"{CODE_SIDE * 2**levels}, got {image_size}"
            )
        blocks, c = [], in_channels
        for h in hidden_planes:
            blocks += [ResNetBlock(c, h, 1), ResNetBlock(h, h, 2)]
            c = h
        self.blocks = nn.Sequential(*blocks)
        self.to_code = nn.Conv2d(c, out_planes, 1)
        self.z_dim = z_dim
        self.head = WeightNormLinear(out_planes * CODE_SIDE**2, 2 * z_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.to_code(self.blocks(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mu, logvar

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent init of the head (outputs ~ 0 mean, 0.01 std on ``x``)."""
        self.head.initialize(self.features(x), init_scale=0.01)
