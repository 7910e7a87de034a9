"""The CPU implementation of :func:`fastflow.ops.cond_bias_elu.cond_bias_elu`: the extension's C++
kernels (``csrc/cond_bias_elu.cpp``; float32, float64 and bfloat16, computed in float32), which take
h stored as planes or as rows (:mod:`fastflow.ops.cpu.storage`) and keep that layout, and the in-place
helpers that hand-written backwards (:mod:`fastflow.ops.cpu.coupling_net`) call outside autograd.
Without the extension, or for other dtypes, the helpers use torch's in-place ops."""

from __future__ import annotations

import math

import torch

from fastflow.ops import _extension, backends
from fastflow.ops.cpu.storage import planes_or_rows, stored_alike, stored_like

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _fake_forward(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.empty_like(h)  # the kernel keeps h's layout


def _fake_backward(out: torch.Tensor, grad_out: torch.Tensor, bias_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(out), out.new_empty(out.shape[:2] if bias_grad else (0,))


FAKES = {
    "cond_bias_elu": _fake_forward,
    "cond_bias_elu_": lambda h, bias: None,
    "cond_bias_elu_backward": _fake_backward,
    "cond_bias_elu_backward_": lambda out, grad, bias_grad: _fake_backward(out, grad, bias_grad)[1],
}


def kernels_loaded() -> bool:
    """Whether the extension's bias + ELU CPU kernels are loaded."""
    return _extension.cpu_kernels_loaded(FAKES)


def takes(h: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether the C++ kernels take h ``[B, Hd, *S]`` and bias: CPU tensors of one of :data:`DTYPES`."""
    return h.device.type == "cpu" and h.dtype in DTYPES and (bias is None or bias.dtype == h.dtype) and kernels_loaded()


backends.register_cpu("cond_bias_elu", takes)


def _runs(h: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the cpu implementation runs here (the selection, so an A/B switch reaches the helpers)."""
    return backends.select("cond_bias_elu", "cpu", h, bias) == "cpu"


def forward(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The kernel on h ``[B, Hd, P]`` stored as planes or rows (the output is stored the same way)."""
    return torch.ops.fastflow.cond_bias_elu(stored_like(h, h), None if bias is None else bias.contiguous())


def backward(
    out: torch.Tensor, grad_out: torch.Tensor, bias_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradients of h and of the bias (None for ``bias_dtype`` None) from the output ``[B, Hd, P]``."""
    grad_h, grad_bias = elu_backward_from_output(out, grad_out, bias_dtype is not None)
    return grad_h, None if grad_bias is None else grad_bias.to(bias_dtype)


def elu_in_place(h: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``h <- elu(h + bias[:, :, None, ...])`` over h ``[B, Hd, *S]`` stored as planes or channels-last
    rows, outside autograd (for Functions with backwards of their own): the extension's kernel, else
    torch's in-place ops."""
    planes = h.view(h.shape[0], h.shape[1], math.prod(h.shape[2:]))
    if planes_or_rows(h) and _runs(h, bias):
        torch.ops.fastflow.cond_bias_elu_(planes, None if bias is None else bias.contiguous())
        return
    if bias is not None:
        planes.add_(bias.unsqueeze(-1))
    torch.nn.functional.elu_(planes)


def _under_vmap(t: torch.Tensor) -> bool:
    """Whether t is a functorch-transformed tensor (torch.func.vmap, grad) or a batched tensor of the
    legacy vmap that ``torch.autograd.functional.jacobian(vectorize=True)`` runs backwards under.
    Never while torch.compile traces (dynamo cannot trace these checks, and vmap does not reach it)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.is_functorch_wrapped_tensor(t) or torch._C._functorch.is_legacy_batchedtensor(t)


def elu_backward_from_output(
    out: torch.Tensor, grad_out: torch.Tensor, bias_grad: bool, reuse_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradients of h and of the bias (or None without ``bias_grad``) from the op's output
    ``out [B, Hd, P]`` and ``grad_out`` of its shape, outside autograd: ``elu'`` is 1 where out > 0,
    else out + 1. grad_h is stored as out is (planes or rows).

    ``reuse_grad=True`` writes grad_h over grad_out when it can (a plain tensor stored as out is, of
    its dtype: not under vmap, which a backward may run in and which has no batching rule for an op
    that writes its input): pass it for a gradient that nothing needs afterwards, such as a GEMM's
    fresh output, to save a buffer."""
    reuse_grad = reuse_grad and not _under_vmap(grad_out)
    if _runs(out, None):
        if reuse_grad and grad_out.dtype == out.dtype and stored_alike(grad_out, out):
            grad_bias = torch.ops.fastflow.cond_bias_elu_backward_(out, grad_out, bias_grad)
            return grad_out, grad_bias if bias_grad else None
        grad_h, grad_bias = torch.ops.fastflow.cond_bias_elu_backward(out, stored_like(grad_out, out), bias_grad)
    else:
        derivative = out.clamp(max=0).add_(1)
        grad_h = grad_out.mul_(derivative) if reuse_grad else grad_out * derivative
        grad_bias = grad_h.sum(2) if bias_grad else None
    return grad_h, grad_bias if bias_grad else None
