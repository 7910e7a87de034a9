"""Find where a NaN or an infinity first appears in a flow.

    with locate_nonfinite(model):
        model.loss(x)          # raises NonFiniteError naming the first layer with a bad output

A debugging aid to wrap around a failing forward by hand; the training loop does not use it (it skips
a step whose gradient norm is not finite and counts it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class NonFiniteError(FloatingPointError):
    """A layer produced NaN or infinite values from finite inputs."""


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


@contextlib.contextmanager
def locate_nonfinite(module: nn.Module) -> Iterator[None]:
    """Within the block, the first submodule of ``module`` (innermost first) whose inputs are finite
    but whose outputs are not raises :class:`NonFiniteError` with its qualified name."""

    def hook(name: str):
        def check(mod: nn.Module, inputs: tuple, output: object) -> None:
            if not _finite(_tensors(output)) and _finite(_tensors(inputs)):
                raise NonFiniteError(
                    f"first non-finite output in {name or type(module).__name__} "
                    f"({type(mod).__name__}) from finite inputs"
                )

        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
