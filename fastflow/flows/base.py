"""The interface every invertible layer follows.

``forward(x, cond=None) -> (y, logdet)`` runs the density direction (x to v), ``inverse(y, cond=None)
-> (x, logdet)`` the generation direction, with ``logdet`` of shape ``[B]`` (log|det dy/dx| for
forward, log|det dx/dy| for inverse). ``initialize(x, cond=None)`` does the layer's data-dependent
init on ``x`` and returns what ``forward`` then returns, so a stack initialises layer by layer.
``cond`` is the global code z ``[B, dz]`` (or None) and only the couplings read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Recomputed:
    """A layer's input rebuilt from its output, with the forward graph recorded from it.

    ``inputs`` are leaf tensors that ``join`` assembles into the layer's input x (or, applied to their
    gradients, into dL/dx); ``output`` and ``logdet`` are ``forward(x)`` recorded from those leaves.
    """

    inputs: list[torch.Tensor]
    join: Callable[[list[torch.Tensor]], torch.Tensor]
    output: torch.Tensor
    logdet: torch.Tensor


class Flow(nn.Module):
    """Base class of the invertible layers."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(x, cond)

    def recompute(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> Recomputed:
        """For memory-efficient backprop: x = inverse(y), then forward(x) with autograd recording.

        Layers whose inverse already evaluates what the forward needs (couplings) override this to
        evaluate it once."""
        with torch.no_grad():
            x, _ = self.inverse(y, cond)
        x = x.detach().requires_grad_()
        out, logdet = self.forward(x, cond)
        return Recomputed([x], lambda parts: parts[0], out, logdet)


class FlowSequence(Flow):
    """Layers applied in order in the density direction, in reverse order for the inverse."""

    def __init__(self, layers: list[Flow]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x))
        for layer in self.layers:
            x, ld = layer(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = y.new_zeros(y.shape[0], dtype=logdet_dtype(y))
        for layer in reversed(self.layers):
            y, ld = layer.inverse(y, cond)
            logdet = logdet + ld
        return y, logdet

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x))
        for layer in self.layers:
            x, ld = layer.initialize(x, cond)
            logdet = logdet + ld
        return x, logdet


def logdet_dtype(x: torch.Tensor) -> torch.dtype:
    """Logdets are float32, or float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
