"""The training step's optimizer: torch's AdamW, fused where torch has a fused kernel for the parameters.

The fused implementation updates every parameter of a device and dtype in one kernel, where torch's
default on the CPU loops over the parameters one at a time (a CIFAR-10 Wolf has 1152 of them), with
several elementwise ops each (benchmarks/RESULTS.md, "optimizer-only ops" of ``profile_step``). The
update is the same AdamW; only the rounding of its last bits differs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")  # where torch.optim.AdamW(fused=True) has kernels


def adamw(
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``parameters``, fused when they are all floating point on a CPU or
    CUDA device (else torch's default implementation)."""
    params = list(parameters)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
