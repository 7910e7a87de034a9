"""Refined Glow: Wolf's flow step and its fine-grained (MaCow-style) multi-scale architecture.

Density direction (x to v) throughout; v has exactly the shape of x.

Step (paper Fig. 3a): ActNorm + 1x1 conv (fused), coupling continuous/up, continuous/down, ActNorm,
coupling skip/up, skip/down.

Levels for L levels with steps ``[n0, [n1a, n1b], ..., nL]`` and factors F (4 everywhere):
level 0 runs n0 steps at full resolution; each internal level runs, per entry n of its sub-list,
n steps then a split prior (1x1 conv, a coupling that transforms the last C//F channels conditioned
on the rest and z, ActNorm on those) and emits those C//F channels to v (C -= C//F, F -= 1); the
channels left are squeezed into the next level; the top level runs its steps. Emitted channels keep
their positions and every squeeze is undone, so v is scored under one N(0, I).
"""

from __future__ import annotations

import torch
from torch import nn

from fastflow.errors import UsageError
from fastflow.flows.actnorm import ActNorm
from fastflow.flows.base import Flow, FlowSequence, logdet_dtype
from fastflow.flows.conv1x1 import ActNormConv1x1, InvertibleConv1x1
from fastflow.flows.coupling import image_coupling
from fastflow.flows.memory import ChainMonitor, leaf_layers, named_layers, run_chain
from fastflow.flows.squeeze import squeeze, unsqueeze


def refined_step(channels: int, hidden: int, z_dim: int, transform: str, alpha: float) -> FlowSequence:
    """One refined-Glow step over ``[B, channels, H, W]``."""

    def coupling(split: str, order: str) -> Flow:
        return image_coupling(channels, hidden, z_dim, split, order, transform=transform, alpha=alpha)

    return FlowSequence(
        [
            ActNormConv1x1(channels),
            coupling("continuous", "up"),
            coupling("continuous", "down"),
            ActNorm(channels),
            coupling("skip", "up"),
            coupling("skip", "down"),
        ]
    )


class TailActNorm(Flow):
    """ActNorm on the last ``num_channels`` channels of ``[B, C, H, W]``; the others pass through."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.actnorm = ActNorm(num_channels)

    def _on_tail(self, x: torch.Tensor, fn) -> tuple[torch.Tensor, torch.Tensor]:
        tail, logdet = fn(x[:, -self.num_channels :])
        return torch.cat([x[:, : -self.num_channels], tail], dim=1), logdet

    def as_actnorm(self, num_channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The tail's ActNorm with the identity (log_scale 0, bias 0) on the other channels."""
        if num_channels < self.num_channels:
            return None
        pad = self.actnorm.log_scale.new_zeros(num_channels - self.num_channels)
        return torch.cat([pad, self.actnorm.log_scale]), torch.cat([pad, self.actnorm.bias])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._on_tail(x, self.actnorm)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._on_tail(y, self.actnorm.inverse)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._on_tail(x, self.actnorm.initialize)


class SplitPrior(FlowSequence):
    """1x1 conv, then a coupling of the last ``C // factor`` channels on the rest (and z), then ActNorm
    on those last channels. ``[B, C, H, W] -> [B, C, H, W]``; the caller emits the last C // factor."""

    def __init__(self, channels: int, factor: int, hidden: int, z_dim: int, transform: str, alpha: float) -> None:
        emitted = channels // factor
        super().__init__(
            [
                InvertibleConv1x1(channels),
                image_coupling(
                    channels,
                    hidden,
                    z_dim,
                    "continuous",
                    "up",
                    num_transformed=emitted,
                    transform=transform,
                    alpha=alpha,
                ),
                TailActNorm(emitted),
            ]
        )
        self.emitted = emitted


class MultiScaleLevel(Flow):
    """``steps``, then each ``(steps, split prior)`` stage emitting channels, then ``child`` on the
    squeezed remainder. ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(
        self, steps: FlowSequence | None, stages: list[tuple[FlowSequence, SplitPrior]], child: Flow | None
    ) -> None:
        super().__init__()
        self.steps = steps
        self.stage_steps = nn.ModuleList([s for s, _ in stages])
        self.stage_priors = nn.ModuleList([p for _, p in stages])
        self.child = child
        self.memory_efficient = False
        self.monitor = ChainMonitor()
        self.name = "flow"

    def set_memory_efficient(self, enabled: bool, monitor: ChainMonitor, name: str = "flow") -> None:
        """Backpropagate through each chain of steps (a stage's steps and its split prior) by
        recomputing inputs from outputs; see :mod:`fastflow.flows.memory`."""
        self.memory_efficient, self.monitor, self.name = enabled, monitor, name
        if isinstance(self.child, MultiScaleLevel):
            self.child.set_memory_efficient(enabled, monitor, name + ".child")

    def _chain(
        self, layers: list[Flow], x: torch.Tensor, cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layers = leaf_layers(layers)
        names = [f"{self.name}.{n}" for n in named_layers(self, layers)]
        return run_chain(layers, names, self.monitor, x, cond)

    def _run(self, x: torch.Tensor, cond: torch.Tensor | None, init: bool) -> tuple[torch.Tensor, torch.Tensor]:
        def call(layer: Flow, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return layer.initialize(h, cond) if init else layer(h, cond)

        chained = self.memory_efficient and not init and torch.is_grad_enabled()
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x))
        if self.steps is not None:
            x, ld = self._chain(list(self.steps.layers), x, cond) if chained else call(self.steps, x)
            logdet = logdet + ld
        emitted = []
        for steps, prior in zip(self.stage_steps, self.stage_priors):
            if chained:
                x, ld1 = self._chain([*steps.layers, prior], x, cond)
                ld2 = 0.0
            else:
                x, ld1 = call(steps, x)
                x, ld2 = call(prior, x)
            logdet = logdet + ld1 + ld2
            emitted.append(x[:, -prior.emitted :])
            x = x[:, : -prior.emitted]
        if self.child is not None:
            h, ld = call(self.child, squeeze(x))
            x = unsqueeze(h)
            logdet = logdet + ld
        return torch.cat([x, *reversed(emitted)], dim=1), logdet

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, cond, init=False)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, cond, init=True)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = y.new_zeros(y.shape[0], dtype=logdet_dtype(y))
        kept = y.shape[1] - sum(p.emitted for p in self.stage_priors)
        x, rest = y[:, :kept], y[:, kept:]
        if self.child is not None:
            h, ld = self.child.inverse(squeeze(x), cond)
            x = unsqueeze(h)
            logdet = logdet + ld
        for steps, prior in zip(reversed(self.stage_steps), reversed(self.stage_priors)):
            x = torch.cat([x, rest[:, : prior.emitted]], dim=1)
            rest = rest[:, prior.emitted :]
            x, ld2 = prior.inverse(x, cond)
            x, ld1 = steps.inverse(x, cond)
            logdet = logdet + ld1 + ld2
        if self.steps is not None:
            x, ld = self.steps.inverse(x, cond)
            logdet = logdet + ld
        return x, logdet


def build_refined_glow(
    in_channels: int,
    levels: int,
    num_steps: list,
    hidden_channels: list,
    factors: list,
    z_dim: int = 0,
    transform: str = "affine",
    alpha: float = 1.0,
) -> MultiScaleLevel:
    """The whole refined-Glow flow over ``[B, in_channels, H, W]`` (see the module docstring)."""
    if levels < 2 or len(num_steps) != levels or len(hidden_channels) != levels:
        raise UsageError(
            f"refined Glow needs levels >= 2 and one num_steps and hidden_channels entry per level; got "
            f"levels={levels}, num_steps={num_steps}, hidden_channels={hidden_channels}"
        )
    if len(factors) != levels - 2:
        raise UsageError(f"refined Glow needs {levels - 2} factors (one per internal level), got {factors}")

    def steps(n: int, channels: int, hidden: int) -> FlowSequence:
        return FlowSequence([refined_step(channels, hidden, z_dim, transform, alpha) for _ in range(n)])

    level_channels = [in_channels, 4 * in_channels]  # input channels of each level
    for level in range(1, levels - 1):
        sub, factor, c = num_steps[level], factors[level - 1], level_channels[level]
        if not isinstance(sub, list) or not 0 < len(sub) < factor:
            raise UsageError(f"internal level {level} needs a list of 1 to {factor - 1} step counts, got {sub}")
        for _ in sub:
            c, factor = c - c // factor, factor - 1
        level_channels.append(4 * c)

    level_flow: Flow = MultiScaleLevel(steps(num_steps[-1], level_channels[-1], hidden_channels[-1]), [], None)
    for level in range(levels - 2, 0, -1):
        c, factor, stages = level_channels[level], factors[level - 1], []
        for n in num_steps[level]:
            prior = SplitPrior(c, factor, hidden_channels[level], z_dim, transform, alpha)
            stages.append((steps(n, c, hidden_channels[level]), prior))
            c, factor = c - prior.emitted, factor - 1
        level_flow = MultiScaleLevel(None, stages, level_flow)
    return MultiScaleLevel(steps(num_steps[0], in_channels, hidden_channels[0]), [], level_flow)
