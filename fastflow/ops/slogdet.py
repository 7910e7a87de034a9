"""Batched log-determinants and inverses of square matrices, exact to float64.

- ``batched_slogdet(W)``: W ``[B, n, n]`` -> sign ``[B]``, log|det W| ``[B]``;
- ``batched_inverse(W)``: W ``[B, n, n]`` -> W^-1 ``[B, n, n]``;
- ``batched_slogdet_inverse(W)``: all three from one factorisation (decoding needs both).

W is float32 or float64 with any strides; the results have W's dtype but are computed in float64,
so float32 input loses nothing but the final rounding. An exactly singular matrix gives sign 0,
log|det| = -inf and an all-NaN inverse (no error, as torch.linalg.slogdet); NaN or infinite
entries raise ``ValueError``: at once for CPU tensors, and for GPU tensors at the next
``fastflow.functional.raise_deferred_errors()`` (the trainer calls it at every log interval), since
reading the check at once would stall the GPU on every call (``fastflow/ops/_deferred.py``).
Gradients: d log|det W| / dW = W^-T and d(W^-1) = -W^-1 dW W^-1 (sign has none); at a singular matrix
they are NaN.

Each call is one call of the operator ``fastflow::slogdet_inverse`` of the C++/CUDA extension
(``csrc/``; LU with partial pivoting per matrix, parallel over the batch). Its forward returns the
inverse too when a gradient will be needed, and the backward reuses it: the backward of
``batched_slogdet`` is one scaled transpose. The autograd formula is registered in C++ (the
Autograd dispatch key, ``csrc/autograd.cpp``: no Python on the way forward or back) and the fake
(meta) implementation here, so the op works with meta tensors and under ``torch.compile``.
Without the extension, or on a device it has no kernel for, the
``*_reference`` functions run instead: torch.linalg in float64.
"""

from __future__ import annotations

import warnings

import torch

from fastflow.ops import _extension
from fastflow.ops._deferred import DeferredCheck

OP = "slogdet_inverse"
QUALNAME = f"fastflow::{OP}"
_FLOAT_DTYPES = (torch.float32, torch.float64)

_ready: bool | None = None  # extension loaded and registered; None until first tried
_device_supported: dict[str, bool] = {"meta": True}  # device type -> the extension runs there


def _check(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"expected a tensor of shape [B, n, n], got {type(weight).__name__}")
    if weight.dim() != 3 or weight.shape[1] != weight.shape[2]:
        raise ValueError(f"expected a batch of square matrices of shape [B, n, n], got shape {tuple(weight.shape)}")
    if weight.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"expected float32 or float64 matrices, got {weight.dtype}")


NONFINITE_MESSAGE = "the batch has NaN or infinite entries; expected finite values"
NONFINITE = DeferredCheck(f"batched_slogdet/batched_inverse: {NONFINITE_MESSAGE}")


def _check_finite(weight: torch.Tensor) -> None:
    """NaN or infinite entries raise ``ValueError``: at once on the CPU, later on other devices."""
    if weight.device.type == "meta":  # no values to check
        return
    finite = torch.isfinite(weight).all()
    if weight.device.type == "cpu":
        if not bool(finite):
            raise ValueError(NONFINITE_MESSAGE)
    else:
        NONFINITE.note(finite.logical_not())


# ---- torch.linalg references (the fallback) ----


def batched_slogdet_reference(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.linalg.slogdet in float64: W ``[B, n, n]`` -> sign ``[B]``, log|det W| ``[B]``."""
    _check(weight)
    _check_finite(weight)
    sign, logabsdet = torch.linalg.slogdet(weight.double())
    return sign.to(weight.dtype), logabsdet.to(weight.dtype)


def batched_inverse_reference(weight: torch.Tensor) -> torch.Tensor:
    """torch.linalg.inv_ex in float64: W ``[B, n, n]`` -> W^-1 ``[B, n, n]``, NaN where singular."""
    _check(weight)
    _check_finite(weight)
    inverse, info = torch.linalg.inv_ex(weight.double())
    return torch.where((info != 0)[:, None, None], torch.nan, inverse).to(weight.dtype)


# ---- the extension operator: fake implementation, loading ----


def _fake(weight: torch.Tensor, with_inverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = weight.shape[0]
    inverse_shape = weight.shape if with_inverse else (0,)
    return weight.new_empty(batch), weight.new_empty(batch), weight.new_empty(inverse_shape)


@torch.compiler.disable
def _set_up() -> bool:
    """Load the extension (whose C++ registers the operator, its kernels and its autograd) and
    register the fake implementation that tracing needs, once."""
    global _ready
    if _ready is None:
        _ready = _extension.load_library()
        if _ready:
            torch.library.register_fake(QUALNAME)(_fake)
    return _ready


@torch.compiler.disable
def _check_device(device: str) -> bool:
    """Whether the extension has a kernel for ``device``; warns once per device type without one."""
    supported = _extension.has_kernel(OP, device)
    if not supported:
        warnings.warn(
            f"fastflow: the C++ extension has no {device} kernel for {QUALNAME}; "
            f"using torch.linalg in float64 for {device} tensors",
            RuntimeWarning,
            stacklevel=4,
        )
    _device_supported[device] = supported
    return supported


def _use_extension(weight: torch.Tensor) -> bool:
    """Whether ``weight`` goes to the extension (else to the torch.linalg references)."""
    if not (_ready if _ready is not None else _set_up()):
        return False
    device = weight.device.type
    supported = _device_supported.get(device)
    return supported if supported is not None else _check_device(device)


def _slogdet_inverse(weight: torch.Tensor, with_inverse: bool) -> tuple[torch.Tensor, ...]:
    if weight.device.type != "cpu":  # the CPU kernel checks by itself (no sync there); see _check_finite
        _check_finite(weight)
    return torch.ops.fastflow.slogdet_inverse.default(weight, with_inverse)


# ---- public API ----


def batched_slogdet(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W ``[B, n, n]`` -> (sign ``[B]``, log|det W| ``[B]``), differentiable in log|det W|."""
    _check(weight)
    if not _use_extension(weight):
        return batched_slogdet_reference(weight)
    with_inverse = weight.requires_grad and torch.is_grad_enabled()  # the backward needs W^-1
    sign, logabsdet, _ = _slogdet_inverse(weight, with_inverse)
    return sign, logabsdet


def batched_inverse(weight: torch.Tensor) -> torch.Tensor:
    """W ``[B, n, n]`` -> W^-1 ``[B, n, n]`` (all NaN for a singular matrix), differentiable."""
    _check(weight)
    if not _use_extension(weight):
        return batched_inverse_reference(weight)
    return _slogdet_inverse(weight, True)[2]


def batched_slogdet_inverse(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W ``[B, n, n]`` -> (sign ``[B]``, log|det W| ``[B]``, W^-1 ``[B, n, n]``) from one factorisation."""
    _check(weight)
    if not _use_extension(weight):
        return (*batched_slogdet_reference(weight), batched_inverse_reference(weight))
    return _slogdet_inverse(weight, True)


if hasattr(torch.ops.fastflow, OP):  # loaded already (e.g. ``import fastflow._C``): register now
    _set_up()
