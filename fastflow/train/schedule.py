"""The paper's learning-rate schedule: linear warmup, then exponential decay per optimiser update.

lr(t) = init + (lr - init) * t / warmup        for t < warmup   (init = 1e-7)
lr(t) = lr * decay ** (t - warmup)             for t >= warmup
where t counts optimiser updates (a step skipped for a non-finite gradient does not count once the
trainer has read it: at its next log record or checkpoint, see ``Trainer.read_step_counts``).
"""

from __future__ import annotations

import torch

INIT_LR = 1e-7


def lr_at(step: int, lr: float, warmup_steps: int, decay: float, init_lr: float = INIT_LR) -> float:
    """The learning rate of update number ``step`` (0-based)."""
    if step < warmup_steps:
        return init_lr + (lr - init_lr) * step / warmup_steps
    return lr * decay ** (step - warmup_steps)


def warmup_exponential(
    optimizer: torch.optim.Optimizer, lr: float, warmup_steps: int, decay: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that sets every group's lr to :func:`lr_at`; call ``step()`` once per update.

    The optimiser's groups must have been created with ``lr``.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, lr, warmup_steps, decay) / lr)
