"""Choice between the plain-PyTorch reference ops and the fused Triton kernels.

``backend="auto"`` takes Triton for CUDA tensors when Triton imports, and the torch ops otherwise;
``"torch"`` and ``"triton"`` force one (forcing Triton on CPU tensors needs ``TRITON_INTERPRET=1``
set before ``fastflow.kernels`` is imported, which is how the tests run the kernels).
``"reference"`` is the yardstick of every speed claim: the same model computed the way the paper's
code computes it, with plain PyTorch ops only (actnorm then ``conv2d`` for a 1x1 conv, slices and
``torch.cat`` for the coupling's split, ``F.elu``, scale and shift apart), no extension, no fused op.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "torch", "triton", "reference")


def triton_available() -> bool:
    """Whether the Triton kernels can run here (a GPU, or the interpreter)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Return ``"torch"``, ``"triton"`` or ``"reference"`` for ``backend`` applied to ``tensors``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend in ("torch", "reference"):
        return backend
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError("backend='triton' was asked for but triton does not import")
    if not on_cuda and not interpreter_on():
        raise ValueError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before fastflow.kernels "
            "is imported; use backend='torch' or move the tensors to a CUDA device"
        )
    return "triton"
