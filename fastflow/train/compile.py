"""Regional compilation of a model's training step: each repeated block compiled on its own.

``torch.compile`` of the whole loss traces every flow step into one graph (minutes of compilation on a
CPU for a CIFAR-10 Wolf). Here each *region* is compiled as a unit with ``nn.Module.compile``: a flow
step (a :class:`~fastflow.flows.FlowSequence` of single layers: the refined-Glow and Glow steps, the
split priors), the whole z prior, and each ResNet block of the encoder. Parameters are graph inputs
(dynamo inlines built-in modules), so the identical steps of a level share one compiled graph and its
backward; what runs between the regions (preprocessing, the batched log-determinants, the loss
terms) stays eager. Memory-efficient backprop runs the layers of a chain one by one inside its own
autograd Function, so those steps run eagerly.

Batch sizes: the first call of a region compiles for its shapes; a second batch size (the last,
smaller batch of an epoch, evaluation) recompiles each region once with the batch dimension dynamic
(dynamo's automatic dynamic shapes), and no other batch size compiles again. Before torch 2.14 the
regions compile with static shapes instead (each new batch size compiles each region once more):
torch 2.11's dynamo stops with an internal assertion on the cpu coupling network's autograd Function
once its sizes are symbolic.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from fastflow._versions import release
from fastflow.flows import FlowSequence
from fastflow.models.encoder import ResNetBlock

COMPILE_MODES = ("off", "default", "max-autotune")
# Every region compiles the same code (nn.Module._call_impl), so dynamo's cache of that code holds
# one entry per distinct region shape and batch-size state: raise its limit above those counts.
RECOMPILE_LIMIT = 256
# The first torch whose dynamo traces the cpu coupling network's Function with symbolic sizes.
DYNAMIC_SHAPES_FROM = (2, 14)


def regions(model: nn.Module) -> Iterator[nn.Module]:
    """The modules compiled as units: flow steps (sequences of single layers), the z prior, encoder
    blocks. Each module is yielded once; none contains another."""
    for module in model.modules():
        if isinstance(module, ResNetBlock):
            yield module
        elif isinstance(module, FlowSequence) and not any(isinstance(m, FlowSequence) for m in module.layers):
            yield module


def compile_regions(model: nn.Module, mode: str = "default", backend: str = "inductor") -> nn.Module:
    """Compile every region of ``model`` in place (``mode``: one of :data:`COMPILE_MODES`; "off" leaves
    the model as it is) and return it. ``backend`` is torch.compile's (``"aot_eager"`` in tests)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "off":
        return model
    limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, limit)
    options = {"backend": backend, "fullgraph": True}
    if release(torch.__version__) < DYNAMIC_SHAPES_FROM:
        options["dynamic"] = False
    if mode != "default":
        options["mode"] = mode
    for module in regions(model):
        module.compile(**options)
    return model
