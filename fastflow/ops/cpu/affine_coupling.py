"""The CPU implementation of :func:`fastflow.ops.affine_coupling.affine_coupling`: the extension's C++
kernels (``csrc/affine_coupling.cpp``: the same formulas as the Triton kernels, float32, float64 and
bfloat16), called by :class:`fastflow.ops.affine_coupling.AffineCouplingFunction` with the arguments
of the Triton launchers. They take mu and u in x's dtype: the op casts narrower ones up first."""

from __future__ import annotations

import torch

from fastflow.ops import _extension, backends
from fastflow.ops.actnorm import logdet_dtype

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _fake_apply(x, mu, u, *form_direction_and_affine):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[0], dtype=logdet_dtype(x))


def _fake_apply_inplace(x, mu, u, *form_direction_and_affine):
    return x.new_empty(x.shape[0], dtype=logdet_dtype(x))


def fake_backward(
    x,
    mu,
    u,
    grad_out,
    grad_logdet,
    start,
    stride,
    scale,
    param,
    special,
    reciprocal,
    shift_first,
    inverse,
    layout,
    affine=None,
):
    d_params = x.new_empty(x.shape[0], mu.shape[1] * (1 if u is None else 2), x.shape[2])
    d_affine = affine.new_empty(affine.shape) if affine is not None else x.new_empty(0, dtype=logdet_dtype(x))
    return torch.empty_like(x, memory_format=torch.contiguous_format), d_params, d_affine


FAKES = {
    "coupling_apply": _fake_apply,
    "coupling_apply_": _fake_apply_inplace,
    "coupling_backward": fake_backward,
}


def kernels_loaded() -> bool:
    """Whether the extension's coupling CPU kernels are loaded."""
    return _extension.cpu_kernels_loaded(FAKES)


def _no_wider(dtype: torch.dtype, than: torch.dtype) -> bool:
    return dtype in DTYPES and torch.promote_types(dtype, than) == than


def takes(x: torch.Tensor, mu: torch.Tensor | None = None, u: torch.Tensor | None = None) -> bool:
    """Whether the C++ kernels take this call: CPU tensors of one of :data:`DTYPES` whose mu and u are
    no wider than x (they are cast to x's dtype)."""
    return (
        x.device.type == "cpu"
        and x.dtype in DTYPES
        and all(_no_wider(t.dtype, x.dtype) for t in (mu, u) if t is not None)
        and kernels_loaded()
    )


backends.register_cpu("affine_coupling", takes)


def coupling_apply(*args):
    """``(out, logdet)`` of x ``[B, C, P]`` in a new output, with the arguments of the Triton launcher
    :func:`fastflow.ops.affine_coupling.triton_apply`."""
    return torch.ops.fastflow.coupling_apply(*args)


def coupling_apply_inplace(flat, mu, u, start: int, stride: int, form: tuple, inverse: bool, affine):
    """The coupling written over ``flat [B, C, P]``; returns the logdet."""
    return torch.ops.fastflow.coupling_apply_(flat, mu, u, start, stride, *form, inverse, affine)


def coupling_backward(*args):
    """``(d x, d params, d affine)`` with the arguments of the Triton launcher
    :func:`fastflow.ops.affine_coupling.triton_backward`: d params is one buffer of mu's and u's
    channels, ordered as the params layout with index ``layout`` orders them (0: mu then u)."""
    return torch.ops.fastflow.coupling_backward(*args)
