"""Input checks that run on the GPU and are read later, so that a training step has no host sync.

A check such as "the batch has no NaN entries" costs a device-to-host copy, and a stall of the GPU, when
its answer is read at once. :class:`DeferredCheck` keeps the answer on the device instead: ``note(bad)``
ORs a 0-d bool tensor into a flag per device, and :func:`raise_deferred_errors` reads every flag once
(the trainer calls it at every log interval) and raises the check's ``ValueError`` when one was set.
On the CPU, where reading costs nothing, the ops check at once.
"""

from __future__ import annotations

import torch

_CHECKS: list[DeferredCheck] = []


class DeferredCheck:
    """A condition noted on the device and raised as ``ValueError(message)`` when read."""

    def __init__(self, message: str) -> None:
        self.message = message
        self._flags: dict[torch.device, torch.Tensor] = {}
        _CHECKS.append(self)

    def note(self, bad: torch.Tensor) -> None:
        """OR the 0-d bool tensor ``bad`` into this device's flag (no host sync); meta tensors (tracing,
        shape checks) hold no value and are ignored."""
        if bad.device.type == "meta":
            return
        previous = self._flags.get(bad.device)
        self._flags[bad.device] = bad if previous is None else previous | bad

    def failed(self) -> bool:
        """Whether any flag was set since the last read; reads and clears them (one copy per device)."""
        flags, self._flags = self._flags, {}
        return any(bool(flag) for flag in flags.values())


def raise_deferred_errors() -> None:
    """Raise the ``ValueError`` of the first deferred check that failed since the last call."""
    failed = [check.message for check in _CHECKS if check.failed()]
    if failed:
        raise ValueError("; ".join(failed))
