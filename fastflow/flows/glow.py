"""Stock Glow (Kingma & Dhariwal 2018), the baseline, on fastflow's fused ops.

The model of the widely used PyTorch port (rosinality/glow-pytorch): ActNorm, an LU-parameterised
(or dense) 1x1 conv, and an affine coupling with scale sigmoid(h + 2) applied as
``y_b = (x_b + t) * s``, a zero-initialised last conv. ActNorm + 1x1 conv run as the fused
:class:`ActNormConv1x1` (analytic LU log-determinant), the coupling as the fused coupling with the
sigmoid scale; ``set_backend("reference")`` gives the plain-PyTorch computation of the same model (the
ops' references), as for Wolf's flows. Each level squeezes first, and all levels
but the last split half the channels off under a learned Gaussian conditioned on the other half
(the last level uses a learned top prior). To share the model code with Wolf, each split-off half
is standardised, ``v = (h - mean) * exp(-log_sd)`` (logdet ``-sum log_sd``), so the whole flow maps
x to a v of x's shape scored under N(0, I); this is the same density as Glow's.

Under autocast (mixed precision) the main path stays in the input's precision, as in Wolf: the 1x1
convs run with autocast off, the couplings compute in float32 from the networks' outputs, and the
prior networks' outputs are cast back before they touch it, so that only the convolutional
networks run in bfloat16/float16.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fastflow.errors import UsageError
from fastflow.flows.base import Flow, FlowSequence, logdet_dtype
from fastflow.flows.conv1x1 import ActNormConv1x1
from fastflow.flows.coupling import AffineCoupling
from fastflow.flows.squeeze import squeeze, unsqueeze
from fastflow.nn import INIT_STD
from fastflow.ops.affine_coupling import CouplingScale


class ZeroConv2d(nn.Module):
    """conv3x3 padded with ones, zero-initialised, output scaled by exp(3 * scale)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.scale = nn.Parameter(torch.zeros(1, c_out, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, [1, 1, 1, 1], value=1.0)) * torch.exp(self.scale * 3)


class GlowCoupling(AffineCoupling):
    """Glow's affine coupling on ``[B, C, H, W]``: the first C - C//2 channels condition,
    ``y_b = (x_b + t) * sigmoid(h + 2)`` (shift first, as openai/glow and rosinality write it), with
    ``h, t = net(x_a).chunk(2)``: conv3x3 -> ReLU -> conv1x1 -> ReLU -> :class:`ZeroConv2d`.
    Runs as the fused coupling (scale "sigmoid", layout "scale_shift"); backend "reference" is the
    plain-PyTorch formula."""

    def __init__(self, channels: int, hidden: int) -> None:
        half = channels // 2
        conv_in = nn.Conv2d(channels - half, hidden, 3, padding=1)
        conv_in.weight.data.normal_(0, INIT_STD)
        conv_in.bias.data.zero_()
        conv_mid = nn.Conv2d(hidden, hidden, 1)
        conv_mid.weight.data.normal_(0, INIT_STD)
        conv_mid.bias.data.zero_()
        net = nn.Sequential(
            conv_in, nn.ReLU(inplace=True), conv_mid, nn.ReLU(inplace=True), ZeroConv2d(hidden, 2 * half)
        )
        super().__init__(
            channels,
            net,
            "continuous",
            "up",
            half,
            scale=CouplingScale("sigmoid", offset=2.0),
            shift_first=True,
            layout="scale_shift",
        )


def glow_step(channels: int, hidden: int, lu: bool) -> FlowSequence:
    """ActNorm + 1x1 conv (one fused op, LU or dense) and Glow's coupling over ``[B, channels, H, W]``."""
    return FlowSequence([ActNormConv1x1(channels, lu=lu), GlowCoupling(channels, hidden)])


class GlowLevel(Flow):
    """Squeeze, ``steps``, then split half off under a learned prior (or, at the top, standardise
    all under the learned top prior). ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, in_channels: int, num_steps: int, hidden: int, lu: bool, child: GlowLevel | None) -> None:
        super().__init__()
        c = 4 * in_channels
        self.steps = FlowSequence([glow_step(c, hidden, lu) for _ in range(num_steps)])
        self.child = child
        self.prior = ZeroConv2d(c // 2, c) if child is not None else ZeroConv2d(c, 2 * c)

    def _prior_input(self, kept: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return kept if self.child is not None else torch.zeros_like(h)

    @staticmethod
    def _unconditional(cond: torch.Tensor | None) -> None:
        if cond is not None:
            raise ValueError("stock Glow is unconditional: cond must be None")

    def _run(self, x: torch.Tensor, init: bool) -> tuple[torch.Tensor, torch.Tensor]:
        h = squeeze(x)
        h, logdet = self.steps.initialize(h) if init else self.steps(h)
        if self.child is not None:
            kept, h = h.chunk(2, dim=1)
        else:
            kept = h
        mean, log_sd = self.prior(self._prior_input(kept, h)).to(h.dtype).chunk(2, dim=1)
        v = (h - mean) * torch.exp(-log_sd)
        logdet = logdet - log_sd.flatten(1).sum(1).to(logdet.dtype)
        if self.child is not None:
            kept, ld = self.child.initialize(kept) if init else self.child(kept)
            v = torch.cat([kept, v], dim=1)
            logdet = logdet + ld
        return unsqueeze(v), logdet

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._unconditional(cond)
        return self._run(x, init=False)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._unconditional(cond)
        return self._run(x, init=True)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._unconditional(cond)
        v = squeeze(y)
        logdet = y.new_zeros(y.shape[0], dtype=logdet_dtype(y))
        if self.child is not None:
            kept, v = v.chunk(2, dim=1)
            kept, ld = self.child.inverse(kept)
            logdet = logdet + ld
        else:
            kept = v
        mean, log_sd = self.prior(self._prior_input(kept, v)).to(v.dtype).chunk(2, dim=1)
        h = v * torch.exp(log_sd) + mean
        logdet = logdet + log_sd.flatten(1).sum(1).to(logdet.dtype)
        if self.child is not None:
            h = torch.cat([kept, h], dim=1)
        h, ld = self.steps.inverse(h)
        return unsqueeze(h), logdet + ld


def build_glow(in_channels: int, levels: int, num_steps: list, hidden_channels: list, lu: bool = True) -> GlowLevel:
    """Glow with ``levels`` levels of ``num_steps[l]`` steps over ``[B, in_channels, H, W]``."""
    if len(num_steps) != levels or len(hidden_channels) != levels:
        raise UsageError(
            f"Glow needs one num_steps and hidden_channels entry per level ({levels}), got "
            f"{num_steps} and {hidden_channels}"
        )
    channels = [in_channels]
    for _ in range(levels - 1):
        channels.append(channels[-1] * 2)  # 4C after the squeeze, half of it continues
    level: GlowLevel | None = None
    for lvl in range(levels - 1, -1, -1):
        level = GlowLevel(channels[lvl], num_steps[lvl], hidden_channels[lvl], lu, level)
    return level
