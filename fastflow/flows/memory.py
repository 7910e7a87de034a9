"""Memory-efficient backpropagation through a chain of invertible layers.

A chain ``x -> f_1 -> ... -> f_n -> y`` keeps only its output: its forward runs without recording
activations, and its backward walks the chain from the end, recomputing each layer's input from its
output with the exact inverse, re-running that one layer with autograd on (under the autocast
state of the forward), and backpropagating through it (RevNet / i-RevNet style). A coupling's
inverse and its re-run share one evaluation of the conditioning network (``Flow.recompute``), so
the extra cost is about one forward pass. Activation memory is then that of one layer, whatever the
chain's length. The gradients of the condition z and of every parameter are returned through the
autograd graph (the parameters are inputs of the Function), so DDP's gradient hooks fire as usual.

Recomputation is only as good as the inverse: each layer's input is fingerprinted in the forward
(up to 256 evenly spaced elements per sample), and the error of the recomputed input against it is
kept on the device (no host sync in the backward: one per layer would stall the GPU ~480 times per
CelebA-HQ step and rule out CUDA-graph capture). :meth:`ChainMonitor.flush` reads them all at once
(the trainer calls it at every log interval; ``max_error``, ``worst_layer`` and ``errors`` call it) and
warns for each layer whose error exceeded the tolerance, naming the layer. The tolerance is
``tolerance`` (1e-3) in full precision and ``low_precision_tolerance`` (3e-2) under bfloat16/float16
autocast: there the conditioning networks round to 8 (or 11) mantissa bits, so a recomputed input that
differs in the last float32 bits can flip a rounding and move the recomputed input by about 1e-3
without anything being wrong.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from fastflow.flows.base import Flow, FlowSequence, logdet_dtype

FINGERPRINT_SIZE = 256


class ChainMonitor:
    """Reconstruction errors of the recomputed inputs (on the device until read), and the threshold
    for a warning. ``errors`` maps each layer to its largest error since the monitor was created."""

    def __init__(self, tolerance: float = 1e-3, low_precision_tolerance: float = 3e-2) -> None:
        self.tolerance = tolerance
        self.low_precision_tolerance = low_precision_tolerance
        self._max_error = 0.0
        self._worst_layer = ""
        self._errors: dict[str, float] = {}
        self._pending: dict[str, tuple[torch.Tensor, bool]] = {}  # name -> (largest error so far, low precision)

    def record(self, name: str, error: torch.Tensor, low_precision: bool = False) -> None:
        """Keep ``error`` (a 0-d tensor, on any device) for the next :meth:`flush`; no host sync."""
        previous = self._pending.get(name)
        if previous is not None:
            error = torch.maximum(previous[0], error)
            low_precision = low_precision or previous[1]
        self._pending[name] = (error.detach(), low_precision)

    def flush(self) -> None:
        """Read the pending errors (one device-to-host copy) and warn for those over the tolerance."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        tensors = [error for error, _ in pending.values()]
        values = torch.stack([t.to(tensors[0].device, torch.float64) for t in tensors]).tolist()
        for (name, (_, low_precision)), error in zip(pending.items(), values):
            self._errors[name] = max(error, self._errors.get(name, 0.0))
            if error > self._max_error:
                self._max_error, self._worst_layer = error, name
            tolerance = max(self.tolerance, self.low_precision_tolerance) if low_precision else self.tolerance
            if not error <= tolerance:  # NaN warns too
                warnings.warn(
                    f"memory-efficient backward: the input of {name} was recomputed with max error "
                    f"{error:.3e} > {tolerance:.1e}; the layer is ill-conditioned and its gradients may "
                    f"be wrong (train with memory_efficient off, or in float64, to compare)",
                    RuntimeWarning,
                    stacklevel=2,
                )

    @property
    def max_error(self) -> float:
        self.flush()
        return self._max_error

    @property
    def worst_layer(self) -> str:
        self.flush()
        return self._worst_layer

    @property
    def errors(self) -> dict[str, float]:
        self.flush()
        return dict(self._errors)


def _fingerprint(x: torch.Tensor) -> torch.Tensor:
    flat = x.detach().flatten(1)
    step = max(1, flat.shape[1] // FINGERPRINT_SIZE)
    return flat[:, ::step][:, :FINGERPRINT_SIZE].clone()


class _InvertibleChain(torch.autograd.Function):
    """``(x, cond, *params) -> (y, logdet)`` for ``layers`` applied in order; see the module docstring."""

    @staticmethod
    def forward(
        ctx,
        layers: list[Flow],
        names: list[str],
        monitor: ChainMonitor,
        num_params: int,
        x: torch.Tensor,
        cond: torch.Tensor | None,
        *params: torch.Tensor,
    ):
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x))
        fingerprints = []
        with torch.no_grad():
            for layer in layers:
                fingerprints.append(_fingerprint(x))
                x, ld = layer(x, cond)
                logdet = logdet + ld
        ctx.layers, ctx.names, ctx.monitor, ctx.fingerprints = layers, names, monitor, fingerprints
        ctx.has_cond = cond is not None
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x.detach(), *((cond,) if cond is not None else ()))
        ctx.params = params
        return x, logdet

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, grad_logdet: torch.Tensor):
        y, *rest = ctx.saved_tensors
        cond = rest[0] if ctx.has_cond else None
        params = ctx.params
        grad_params = [None] * len(params)
        grad_cond = torch.zeros_like(cond) if cond is not None else None
        grad_y = torch.zeros_like(y) if grad_y is None else grad_y
        device, autocast_on, autocast_dtype = ctx.autocast
        for layer, name, fp in zip(reversed(ctx.layers), reversed(ctx.names), reversed(ctx.fingerprints)):
            with torch.enable_grad(), torch.autocast(device, autocast_dtype, enabled=autocast_on):
                c = cond.detach().requires_grad_() if cond is not None else None
                rec = layer.recompute(y, c)
            x = rec.join([t.detach() for t in rec.inputs])
            if x.numel():
                ctx.monitor.record(name, (_fingerprint(x) - fp).abs().amax(), low_precision=autocast_on)
            inputs = rec.inputs + ([c] if c is not None else []) + list(params)
            grads = torch.autograd.grad(
                [rec.output, rec.logdet], inputs, [grad_y, grad_logdet.to(rec.logdet.dtype)], allow_unused=True
            )
            n = len(rec.inputs)
            grad_y = rec.join([g if g is not None else torch.zeros_like(t) for g, t in zip(grads[:n], rec.inputs)])
            if c is not None and grads[n] is not None:
                grad_cond = grad_cond + grads[n]
            for i, g in enumerate(grads[n + (c is not None) :]):
                if g is not None:
                    grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
            y = x
        return (None, None, None, None, grad_y, grad_cond, *grad_params)


def leaf_layers(layers: list[Flow]) -> list[Flow]:
    """``layers`` with every :class:`FlowSequence` expanded into its layers, recursively."""
    out: list[Flow] = []
    for layer in layers:
        out += leaf_layers(list(layer.layers)) if isinstance(layer, FlowSequence) else [layer]
    return out


def run_chain(
    layers: list[Flow], names: list[str], monitor: ChainMonitor, x: torch.Tensor, cond: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``layers`` in order (density direction) keeping only the chain's output for backward."""
    params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
    return _InvertibleChain.apply(layers, names, monitor, len(params), x, cond, *params)


def named_layers(module: nn.Module, layers: list[Flow]) -> list[str]:
    """Qualified names of ``layers`` inside ``module`` (for the monitor's warnings)."""
    names = {id(m): n for n, m in module.named_modules()}
    return [names.get(id(layer), type(layer).__name__) for layer in layers]
