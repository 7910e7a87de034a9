"""Kernel launchers that ``torch.compile`` sees through: :func:`launcher` registers a function as a
PyTorch custom operator with its fake (meta) implementation, the output shapes and dtypes.

While ``torch.compile`` traces, the function is called as the operator, which the tracer records as
an opaque node with known outputs (no graph break, and CUDA graphs replay its kernels); in eager mode
it is called directly, so an eager step pays no dispatcher overhead. An operator returns new tensors
only (an absent gradient is an empty tensor) and takes scalars, not tuples, so each launcher is
written in that form once and serves both modes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

LIBRARY = "fastflow_triton"
Launcher = TypeVar("Launcher", bound=Callable)


def launcher(name: str, fake: Callable) -> Callable[[Launcher], Launcher]:
    """Decorator: ``fastflow_triton::<name>`` from the type-annotated function, with ``fake``."""

    def register(fn: Launcher) -> Launcher:
        op = torch.library.custom_op(f"{LIBRARY}::{name}", fn, mutates_args=())
        op.register_fake(fake)

        @functools.wraps(fn)
        def call(*args):
            return op(*args) if torch.compiler.is_compiling() else fn(*args)

        return call  # type: ignore[return-value]

    return register


def accumulation_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype the kernels accumulate in (and give sums in): float64 if any input is, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def absent(like: torch.Tensor) -> torch.Tensor:
    """The empty tensor an operator returns for an absent (None) output."""
    return like.new_empty(0)


def kept(t: torch.Tensor, keep: bool) -> torch.Tensor | None:
    """An operator's output, or None where it stands for an absent one (``keep`` False)."""
    return t if keep else None
