"""Choice between the plain-PyTorch reference ops and the fused Triton kernels.

``backend="auto"`` takes Triton for CUDA tensors when Triton imports and supports the card, and the
torch backend otherwise; ``"torch"`` and ``"triton"`` force one (forcing Triton on CPU tensors needs
``TRITON_INTERPRET=1`` set before ``fastflow.kernels`` is imported, which is how the tests run the
kernels). ``"reference"`` is the yardstick of every speed claim: the same model computed the way the
paper's code computes it, with plain PyTorch ops only (actnorm then ``conv2d`` for a 1x1 conv, slices and
``torch.cat`` for the coupling's split, ``F.elu``, scale and shift apart), no extension, no fused op.

Cards: Triton 3.x supports NVIDIA GPUs of compute capability 8.0 and newer (A100, H100/H200, RTX 30xx
and later). On older cards (V100 is 7.0, T4 7.5) ``"auto"`` uses the torch backend, with one
``RuntimeWarning`` per card saying so; ``"triton"`` is still tried there when asked for explicitly.
"""

from __future__ import annotations

import os
import warnings

import torch

from fastflow import _versions

BACKENDS = ("auto", "torch", "triton", "reference")
MIN_TRITON_CAPABILITY = (8, 0)  # oldest compute capability the Triton kernels are built and tested for

_card_supported: dict[int, bool] = {}  # CUDA device index -> Triton supports it (filled on first use)


def triton_available() -> bool:
    """Whether the Triton kernels can run here (a GPU, or the interpreter)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_interpreter_checked = False  # a plain global: torch.compile reads it


def check_interpreter() -> None:
    """Raise when Triton's interpreter cannot run the kernels with this numpy (README "Supported
    versions"); checked once."""
    global _interpreter_checked
    if not _interpreter_checked:
        import numpy
        import triton

        conflict = _versions.interpreter_conflict(triton.__version__, numpy.__version__)
        if conflict is not None:
            raise RuntimeError(conflict)
        _interpreter_checked = True


def _check_card(index: int) -> bool:
    """Whether Triton supports CUDA device ``index``; warns once for a card it does not."""
    capability = torch.cuda.get_device_capability(index)
    supported = capability >= MIN_TRITON_CAPABILITY
    if not supported:
        name = torch.cuda.get_device_name(index)
        warnings.warn(
            f"fastflow: {name} (compute capability {capability[0]}.{capability[1]}) is older than the "
            f"{MIN_TRITON_CAPABILITY[0]}.{MIN_TRITON_CAPABILITY[1]} that Triton supports; backend='auto' "
            "runs the torch backend on it (pass backend='triton' to try the kernels anyway)",
            RuntimeWarning,
            stacklevel=4,
        )
    _card_supported[index] = supported
    return supported


def card_supports_triton(device: torch.device) -> bool:
    """Whether the fused Triton kernels support the CUDA ``device`` (compute capability >= 8.0)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    supported = _card_supported.get(index)
    return supported if supported is not None else _check_card(index)


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Return ``"torch"``, ``"triton"`` or ``"reference"`` for ``backend`` applied to ``tensors``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend in ("torch", "reference"):
        return backend
    present = [t for t in tensors if t is not None]
    on_cuda = all(t.is_cuda for t in present)
    if backend == "auto":
        usable = on_cuda and triton_available() and (not present or card_supports_triton(present[0].device))
        return "triton" if usable else "torch"
    if not triton_available():
        raise RuntimeError("backend='triton' was asked for but triton does not import")
    if not on_cuda and not interpreter_on():
        raise ValueError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before fastflow.kernels "
            "is imported; use backend='torch' or move the tensors to a CUDA device"
        )
    if not on_cuda:
        check_interpreter()
    return "triton"
