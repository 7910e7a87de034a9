"""The interface every invertible layer follows.

``forward(x, cond=None) -> (y, logdet)`` runs the density direction (x to v), ``inverse(y, cond=None)
-> (x, logdet)`` the generation direction, with ``logdet`` of shape ``[B]`` (log|det dy/dx| for
forward, log|det dx/dy| for inverse). ``initialize(x, cond=None)`` does the layer's data-dependent
init on ``x`` and returns what ``forward`` then returns, so a stack initialises layer by layer.
``cond`` is the global code z ``[B, dz]`` (or None) and only the couplings read it.

Layers with ``writes_in_place = True`` (the couplings) also take ``inplace=True`` in both directions:
they then write their output over their input (under no_grad only). :class:`FlowSequence` asks for
it when autograd is off and the input is a tensor the sequence made itself (not stored in its own
input's memory), so evaluation and sampling write only the channels a coupling changes.

Layers that are a per-channel affine map offer themselves as an ActNorm over their whole input
(:meth:`Flow.as_actnorm`), and a layer that can compute such a map on its own output
(:meth:`Flow.folds_actnorm`: the couplings on fused kernels) takes it as ``actnorm=(log_scale,
bias)`` in forward. :class:`FlowSequence` folds each such pair in the density direction, so the
ActNorm costs no pass of its own; the inverse and ``initialize`` run the layers one by one, and so
does a pair with forward hooks on either layer (:func:`fastflow.flows.debug.locate_nonfinite`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fastflow.ops.actnorm import logdet_dtype


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

    writes_in_place = False  # whether forward and inverse take inplace=True (see the module docstring)

    def as_actnorm(self, num_channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This layer's density direction as an ActNorm ``(log_scale, bias)`` over all ``num_channels``
        channels of its input (``y = x * exp(log_scale) + bias``, logdet ``P * sum(log_scale)``), or
        None when it is not one."""
        return None

    def folds_actnorm(self) -> bool:
        """Whether ``forward`` takes ``actnorm=(log_scale, bias)`` and applies it to its output."""
        return False

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
    """Layers applied in order in the density direction, in reverse order for the inverse.

    With autograd off, a layer that ``writes_in_place`` writes over its input when that input is not
    stored in the memory of the sequence's own input (it was made by an earlier layer, which nothing
    else holds). In the density direction a layer that ``folds_actnorm`` takes the next layer with it
    when that one is an ActNorm (``as_actnorm``) and neither has forward hooks."""

    def __init__(self, layers: list[Flow]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def _apply_layers(
        self, layers: list[Flow], x: torch.Tensor, cond: torch.Tensor | None, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x))
        # in-place writes only in eager evaluation (a compiled region has no storage addresses to compare)
        source = None if torch.is_grad_enabled() or torch.compiler.is_compiling() else _storage(x)
        i = 0
        while i < len(layers):
            layer, options = layers[i], {}
            if source is not None and layer.writes_in_place and _storage(x) != source:
                options["inplace"] = True
            if not inverse and i + 1 < len(layers) and layer.folds_actnorm() and not _hooked(*layers[i : i + 2]):
                actnorm = layers[i + 1].as_actnorm(x.shape[1])
                if actnorm is not None:
                    options["actnorm"] = actnorm
                    i += 1
            x, ld = (layer.inverse if inverse else layer)(x, cond, **options)
            logdet = logdet + ld
            i += 1
        return x, logdet

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._apply_layers(list(self.layers), x, cond, inverse=False)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._apply_layers(list(reversed(self.layers)), y, cond, inverse=True)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x))
        for layer in self.layers:
            x, ld = layer.initialize(x, cond)
            logdet = logdet + ld
        return x, logdet


def _hooked(*layers: nn.Module) -> bool:
    """Whether any of ``layers`` has forward hooks, which expect to see its own call and output (a pair
    is then never folded)."""
    return any(layer._forward_hooks or layer._forward_pre_hooks for layer in layers)


def _storage(t: torch.Tensor) -> int:
    """The address of the memory ``t`` lives in (views of one tensor share it)."""
    return t.untyped_storage().data_ptr()
