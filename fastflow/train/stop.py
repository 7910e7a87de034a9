"""Stopping a training run on SIGTERM or SIGINT without losing it.

The first SIGTERM (what SLURM and Kubernetes send before they kill a job) or SIGINT (Ctrl-C) is only
recorded; the step under way finishes, every rank agrees at the step boundary to stop there (one
all-reduce of one number per step when distributed, on the CPU through gloo, so that a GPU run does not
wait for its device at every step), rank 0 writes
``checkpoint.pt`` atomically and :class:`TrainingStopped` says where and how to ``--resume``; the
command exits with 128 + the signal number. The first signal also restores the default action of
both signals, so a second one stops the process at once (``checkpoint.pt`` is then the previous one,
whole: it is only ever replaced atomically).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import torch
import torch.distributed as dist

from fastflow.train import distributed as D

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the training and validation data loaders. Ctrl-C in a terminal and SLURM
    signal every process of the job, data workers too: a worker killed by SIGTERM fails the main
    process's next batch, so workers ignore both signals and keep serving batches until the main
    process shuts them down at its step boundary (or, if it is killed, torch's watchdog in each worker
    sees it gone)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class TrainingStopped(Exception):
    """Training stopped at ``step`` on signal ``signum``, with ``checkpoint`` written for ``--resume``."""

    def __init__(self, signum: int, step: int, checkpoint: Path, rank: int) -> None:
        self.signum, self.step, self.checkpoint, self.rank = signum, step, Path(checkpoint), rank
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}: wrote {self.checkpoint}; continue the run with "
            f"`fastflow train --out {self.checkpoint.parent} --resume`"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    """Within the block, SIGTERM and SIGINT request a stop at the next step boundary (see the module
    docstring). Handlers can only be installed from the main thread; elsewhere the block changes nothing.

    ``at_step_boundary(step)`` (call it after each step and its periodic work) agrees over ranks whether
    any rank was signalled; if one was, it calls ``save`` and raises :class:`TrainingStopped`.
    """

    def __init__(self, ctx: D.Context, save: Callable[[], None], checkpoint: Path) -> None:
        self.ctx, self.save, self.checkpoint = ctx, save, checkpoint
        self.signum = 0  # the first signal received, 0 for none
        self._previous: dict[int, object] = {}
        # Every rank builds this object (a collective call): a gloo group beside NCCL, for a CPU flag.
        self._group = dist.new_group(backend="gloo") if ctx.distributed and ctx.device.type != "cpu" else None

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for s in STOP_SIGNALS:  # a second signal takes the default action: the process ends at once
            signal.signal(s, signal.SIG_DFL)

    def agreed_signal(self) -> int:
        """The signal every rank stops on at this boundary (the largest number any rank received), or 0."""
        if not self.ctx.distributed:
            return self.signum
        received = torch.tensor([float(self.signum)])
        dist.all_reduce(received, op=dist.ReduceOp.MAX, group=self._group)
        return int(received.item())

    def at_step_boundary(self, step: int) -> None:
        signum = self.agreed_signal()
        if signum:
            self.save()
            raise TrainingStopped(signum, step, self.checkpoint, self.ctx.rank)
