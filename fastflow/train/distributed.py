"""torch.distributed plumbing: process-group setup from torchrun's variables, parameter broadcast,
DDP wrapping (with SyncBatchNorm on CUDA), reductions, and rank-0 work whose failure every rank sees.

A process started by ``torchrun`` finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the master address
in its environment; a plain ``python`` process has none and runs alone (world size 1, no process
group). NCCL is used on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from fastflow.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Context:
    """This process's place in the run: ``rank`` of ``world_size``, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; otherwise ``name`` itself."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} was asked for, but CUDA is not available here; use --device cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r} was asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def setup(device: str = "auto") -> Context:
    """Join the process group described by the environment (torchrun), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context(0, 1, pick_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), dev)


def teardown(ctx: Context, synchronize: bool = True) -> None:
    """Leave the process group (a no-op when running alone). ``synchronize``: first wait until every
    rank is here (a rank that destroys its gloo group while a peer still talks to it can abort in
    gloo's transport thread); False on the way out of an error, where the peers may never arrive."""
    if ctx.distributed and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, ctx: Context, parameters: bool = True) -> None:
    """Copy rank 0's parameters (unless ``parameters`` is False) and buffers to every rank.

    Used after rank 0's data-dependent init, and before validation so that every rank evaluates
    with rank 0's BatchNorm running statistics (without SyncBatchNorm they drift apart per rank).
    """
    if not ctx.distributed:
        return
    tensors = (list(module.parameters()) if parameters else []) + list(module.buffers())
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def wrap(module: nn.Module, ctx: Context) -> nn.Module:
    """DDP around ``module`` when distributed; on CUDA its BatchNorms become SyncBatchNorm first.

    On CPU (gloo) BatchNorm stays per process: each rank normalises with its own batch statistics,
    and DDP broadcasts rank 0's running statistics at every forward, so all ranks keep the same buffers.
    """
    if not ctx.distributed:
        return module
    if ctx.device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[ctx.device.index])
    return nn.parallel.DistributedDataParallel(module)


def all_reduce_sum(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (itself when running alone)."""
    if ctx.distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


class MainRankFailed(RuntimeError):
    """Raised on the other ranks when work that only rank 0 does (writing the run folder) failed there."""


def on_main(ctx: Context, work: Callable[[], None], what: str) -> None:
    """Run ``work`` on rank 0 only, then agree over ranks whether it failed. If it did, rank 0 raises
    its own error and every other rank :class:`MainRankFailed` naming ``what``, instead of running on
    into the next collective (where gloo fails with a connection traceback and NCCL may wait for its
    watchdog, unless the launcher tears the group down, as torchrun does). One all-reduce of one
    number per call."""
    error = None
    if ctx.is_main:
        try:
            work()
        except Exception as err:  # re-raised below, once every rank knows
            error = err
    failed = all_reduce_sum(torch.tensor([float(error is not None)], device=ctx.device), ctx).item() > 0
    if error is not None:
        raise error
    if failed:
        raise MainRankFailed(f"rank 0 failed to {what} (its error is in its output); rank {ctx.rank} stops too")
