"""The implementations of the fused ops as a named axis, and :func:`select`, the one place that picks one.

Every op takes ``backend=``, one of :data:`BACKENDS`:

- ``"reference"``: plain PyTorch, computed the way the paper's code computes it (actnorm then
  ``conv2d`` for a 1x1 conv, slices and ``torch.cat`` for the coupling's split, ``F.elu``, scale and
  shift apart), no extension, no fused op: the yardstick of every speed claim;
- ``"triton"``: the fused Triton kernels (``fastflow.kernels``), on CUDA tensors, or on CPU tensors
  with ``TRITON_INTERPRET=1`` set before ``fastflow.kernels`` is imported (how the tests run them);
- ``"cpu"``: the CPU implementation (:mod:`fastflow.ops.cpu`): the extension's C++ CPU kernels and
  the CPU formulations (the actnorm folded into one batched GEMM, the coupling network as GEMMs over
  channels-last rows). An op without a CPU implementation (``weight_norm``), or whose CPU
  implementation cannot take a call (another device or dtype, the extension not built), runs its
  reference;
- ``"auto"``: what :data:`AUTO` says for the op, the tensors' device and whether ``torch.compile``
  is tracing, where it can run.

Cards: Triton 3.x supports NVIDIA GPUs of compute capability 8.0 and newer (A100, H100/H200, RTX 30xx
and later). On older cards (V100 is 7.0, T4 7.5) ``"auto"`` takes the ``"cpu"`` entry instead (there:
the reference ops, and the folded GEMM of ``actnorm_conv1x1``), with one ``RuntimeWarning`` per card
saying so; ``"triton"`` is still tried there when asked for explicitly.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator

import torch

from fastflow import _versions

IMPLEMENTATIONS = ("reference", "triton", "cpu")
BACKENDS = ("auto", *IMPLEMENTATIONS)
MIN_TRITON_CAPABILITY = (8, 0)  # oldest compute capability the Triton kernels are built and tested for

# What backend="auto" runs: op -> device type ("cuda", or "cpu" for every other device) -> implementation;
# "<device>+compile" is the entry while torch.compile traces, where it differs. The measurements behind
# each choice: benchmarks/RESULTS.md ("Compiled training and fastflow's ops under torch.compile").
AUTO: dict[str, dict[str, str]] = {
    "actnorm_conv1x1": {"cuda": "triton", "cpu": "cpu"},
    "affine_coupling": {"cuda": "triton", "cpu": "cpu"},
    "cond_bias_elu": {"cuda": "triton", "cpu": "cpu"},
    # compiled on the CPU, inductor fuses the plain conv2d + bias + ELU better than the opaque op
    "conv1x1_bias_elu": {"cuda": "triton", "cpu": "cpu", "cpu+compile": "reference"},
    "coupling_net": {"cuda": "reference", "cpu": "cpu"},  # no Triton kernel: the network's own ops
    # eager on CUDA: 2 launches per layer and step instead of ~21; compiled, inductor fuses the plain maths
    "weight_norm": {"cuda": "triton", "cpu": "reference", "cuda+compile": "reference"},
}

# op -> whether its CPU implementation takes a call on these tensors; each module of fastflow.ops.cpu
# registers its own (:func:`register_cpu`), so this bottom module imports none of them. An op missing
# here has none.
_CPU_TAKES: dict[str, Callable[..., bool]] = {}
_replaced: dict[str, str] = {}  # op -> implementation forced by :func:`replaced` (A/B benchmarks)
_card_supported: dict[int, bool] = {}  # CUDA device index -> Triton supports it (filled on first use)


def register_cpu(op: str, takes: Callable[..., bool]) -> None:
    """Declare that ``op`` has a CPU implementation, which takes a call when ``takes(*tensors)``."""
    _CPU_TAKES[op] = takes


@contextlib.contextmanager
def replaced(op: str, implementation: str) -> Iterator[None]:
    """Within the block, ``op`` runs ``implementation`` wherever a backend other than "reference" is
    asked for (where that implementation cannot take a call, the reference runs): how an A/B
    benchmark switches one op's formulation off by name."""
    if op not in AUTO or implementation not in IMPLEMENTATIONS:
        raise ValueError(f"expected an op of {tuple(AUTO)} and an implementation of {IMPLEMENTATIONS}")
    previous = _replaced.get(op)
    _replaced[op] = implementation
    try:
        yield
    finally:
        if previous is None:
            del _replaced[op]
        else:
            _replaced[op] = previous


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
            "runs the cpu backend's entries on it (pass backend='triton' to try the kernels anyway)",
            RuntimeWarning,
            stacklevel=5,
        )
    _card_supported[index] = supported
    return supported


def card_supports_triton(device: torch.device) -> bool:
    """Whether the fused Triton kernels support the CUDA ``device`` (compute capability >= 8.0)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    supported = _card_supported.get(index)
    return supported if supported is not None else _check_card(index)


def _auto(op: str, present: list[torch.Tensor]) -> str:
    on_cuda = all(t.is_cuda for t in present)
    device = "cuda" if on_cuda else "cpu"
    table = AUTO[op]
    compiled = table.get(f"{device}+compile") if torch.compiler.is_compiling() else None
    wanted = compiled or table[device]
    if wanted == "triton":
        usable = on_cuda and triton_available() and (not present or card_supports_triton(present[0].device))
        return "triton" if usable else AUTO[op]["cpu"]
    return wanted


def _check_triton(on_cuda: bool) -> None:
    if not triton_available():
        raise RuntimeError("backend='triton' was asked for but triton does not import")
    if not on_cuda and not interpreter_on():
        raise ValueError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before fastflow.kernels "
            "is imported; use backend='cpu' or move the tensors to a CUDA device"
        )
    if not on_cuda:
        check_interpreter()


def select(op: str, backend: str, *tensors: torch.Tensor | None) -> str:
    """The implementation (``"reference"``, ``"triton"`` or ``"cpu"``) that runs ``op`` with
    ``backend`` on ``tensors`` (the op's inputs, None for absent ones; the CPU implementation's check
    reads them in the op's order). See the module docstring."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "reference":
        return "reference"
    present = [t for t in tensors if t is not None]
    chosen = _replaced.get(op) or (_auto(op, present) if backend == "auto" else backend)
    if chosen == "triton":
        _check_triton(all(t.is_cuda for t in present))
    elif chosen == "cpu" and not (op in _CPU_TAKES and _CPU_TAKES[op](*tensors)):
        return "reference"
    return chosen
