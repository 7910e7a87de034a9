"""The middle step of the coupling network: ELU(conv1x1 output + FC(z) per channel).

h ``[B, Hd, *S]`` (``[B, Hd, H, W]`` in image couplings, ``[B, Hd]`` in vector ones), bias ``[B, Hd]``
(or None for no condition) -> ``[B, Hd, *S]`` in h's dtype. The op is direction-free (it sits inside
the conditioning network, not in the flow).

:class:`CondBiasEluFunction` makes one pass forward and one backward, and saves only its output
(``elu'`` is recovered from it), so the sum ``h + bias`` is never materialised. Its kernels are the
Triton ones (``fastflow.kernels.cond_bias_elu``) for ``backend="triton"``, and on the CPU, for the
``"torch"`` backend, the C++ ones of the extension (``csrc/cond_bias_elu.cpp``, float32, float64 and
bfloat16 computed in float32; 2.8-3.5x torch's ``F.elu(h + bias)`` at 1 and 2 threads on the AVX2
AMD EPYC, benchmarks/RESULTS.md). They take h stored as planes (NCHW) or as rows (channels-last, the
coupling network's CPU layout) and keep that layout. Without the extension, or for other dtypes, the
torch backend is :func:`cond_bias_elu_reference`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from fastflow.ops import _extension, _library
from fastflow.ops._backend import resolve_backend
from fastflow.ops.conv_rows import is_channels_last


def cond_bias_elu_reference(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain PyTorch: ``elu(h + bias[:, :, None, ...])``, in h's dtype."""
    dtype = h.dtype
    if bias is not None:
        h = h + bias.view(*bias.shape, *([1] * (h.dim() - 2)))
    return torch.nn.functional.elu(h).to(dtype)


def _triton_kernels() -> tuple[Callable, Callable]:
    return _library.cond_bias_elu_forward, _library.cond_bias_elu_backward


def stored_as_rows(t: torch.Tensor) -> bool:
    """Whether ``t [B, C, P]`` is stored as rows (the memory of a contiguous ``[B, P, C]``, as a
    channels_last ``[B, C, H, W]`` viewed as ``[B, C, H*W]`` is) rather than as planes."""
    return not t.is_contiguous() and t.transpose(1, 2).is_contiguous()


def _like(t: torch.Tensor, layout_of: torch.Tensor) -> torch.Tensor:
    """``t [B, C, P]`` stored as ``layout_of`` is (rows or planes), copied only when it is not."""
    if stored_as_rows(layout_of):
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    return t.contiguous()


def _stored_alike(t: torch.Tensor, layout_of: torch.Tensor) -> bool:
    """Whether ``t [B, C, P]`` is stored as ``layout_of`` is (both planes or both rows), densely."""
    dense = t.is_contiguous() or t.transpose(1, 2).is_contiguous()
    return dense and stored_as_rows(t) == stored_as_rows(layout_of)


def _cpu_forward(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The extension's kernel on h stored as planes or rows (the output is stored the same way)."""
    return torch.ops.fastflow.cond_bias_elu(_like(h, h), None if bias is None else bias.contiguous())


def _cpu_backward(
    out: torch.Tensor, grad_out: torch.Tensor, bias_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    grad_h, grad_bias = elu_backward_from_output(out, grad_out, bias_dtype is not None)
    return grad_h, None if grad_bias is None else grad_bias.to(bias_dtype)


KERNELS: dict[str, Callable[[], tuple[Callable, Callable]]] = {
    "triton": _triton_kernels,
    "cpu": lambda: (_cpu_forward, _cpu_backward),
}


class CondBiasEluFunction(torch.autograd.Function):
    """``elu(h + bias[:, :, None, ...])`` for h ``[B, Hd, *S]`` and bias ``[B, Hd]`` or None, with the
    kernels ``KERNELS[kernels]`` (``"triton"`` or ``"cpu"``), which see h as ``[B, Hd, P]``.

    ``reuse_input``: the CPU kernels write the result over h (contiguous or channels-last) and return
    h itself, marked dirty, so autograd refuses any backward that still needed h's old values."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, bias: torch.Tensor | None, kernels: str, reuse_input: bool) -> torch.Tensor:
        forward_kernel, _ = KERNELS[kernels]()
        if reuse_input and kernels == "cpu" and _reusable(h):
            elu_in_place(h, bias)
            ctx.mark_dirty(h)
            out = h
        else:
            out = forward_kernel(h.reshape(h.shape[0], h.shape[1], math.prod(h.shape[2:])), bias).view(h.shape)
        ctx.save_for_backward(out)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.kernels = kernels
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        _, backward_kernel = KERNELS[ctx.kernels]()
        (out,) = ctx.saved_tensors
        bias_dtype = ctx.bias_dtype if ctx.needs_input_grad[1] else None
        shape = (out.shape[0], out.shape[1], math.prod(out.shape[2:]))
        grad_h, grad_bias = backward_kernel(out.reshape(shape), grad_out.reshape(shape), bias_dtype)
        return grad_h.view(out.shape), grad_bias, None, None


def _reusable(h: torch.Tensor) -> bool:
    """Whether the in-place CPU kernel can write over h: stored as planes or channels-last rows."""
    return h.is_contiguous() or is_channels_last(h)


def _fake_forward(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.empty_like(h)  # the kernel keeps h's layout


def _fake_backward(out: torch.Tensor, grad_out: torch.Tensor, bias_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(out), out.new_empty(out.shape[:2] if bias_grad else (0,))


_CPU_FAKES = {
    "cond_bias_elu": _fake_forward,
    "cond_bias_elu_": lambda h, bias: None,
    "cond_bias_elu_backward": _fake_backward,
    "cond_bias_elu_backward_": lambda out, grad, bias_grad: _fake_backward(out, grad, bias_grad)[1],
}


def _cpu_kernels_loaded() -> bool:
    """Whether the extension's bias + ELU CPU kernels are loaded."""
    return _extension.cpu_kernels_loaded(_CPU_FAKES)


def _use_cpu_kernels(h: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        h.device.type == "cpu"
        and h.dtype in (torch.float32, torch.float64, torch.bfloat16)
        and (bias is None or bias.dtype == h.dtype)
        and _cpu_kernels_loaded()
    )


def elu_in_place(h: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``h <- elu(h + bias[:, :, None, ...])`` over h ``[B, Hd, *S]`` stored as planes or channels-last
    rows, outside autograd (for Functions with backwards of their own): the extension's kernel, else
    torch's in-place ops."""
    planes = h.view(h.shape[0], h.shape[1], math.prod(h.shape[2:]))
    if _use_cpu_kernels(h, bias) and _reusable(h):
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
    if _use_cpu_kernels(out, None):
        if reuse_grad and grad_out.dtype == out.dtype and _stored_alike(grad_out, out):
            grad_bias = torch.ops.fastflow.cond_bias_elu_backward_(out, grad_out, bias_grad)
            return grad_out, grad_bias if bias_grad else None
        grad_h, grad_bias = torch.ops.fastflow.cond_bias_elu_backward(out, _like(grad_out, out), bias_grad)
    else:
        derivative = out.clamp(max=0).add_(1)
        grad_h = grad_out.mul_(derivative) if reuse_grad else grad_out * derivative
        grad_bias = grad_h.sum(2) if bias_grad else None
    return grad_h, grad_bias if bias_grad else None


def cond_bias_elu_fused(
    h: torch.Tensor, bias: torch.Tensor | None, kernels: str = "triton", reuse_input: bool = False
) -> torch.Tensor:
    """The fused op on ``[B, Hd, *S]`` with ``kernels`` ``"triton"`` or ``"cpu"``. Triton's result is
    contiguous; the CPU kernels keep a channels-last h channels-last (no copy either way)."""
    return CondBiasEluFunction.apply(h, bias, kernels, reuse_input)


def cond_bias_elu(
    h: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto", reuse_input: bool = False
) -> torch.Tensor:
    """``elu(h + bias[:, :, None, None])`` in one pass; see the module docstring.

    ``reuse_input=True`` lets the op write the result over h when it can (the CPU kernels on an h
    stored as planes or channels-last; the others compute out of place): pass it for an h that
    nothing needs afterwards, such as a GEMM's fresh output, to save a pass of memory. Autograd
    refuses the backward if something did need h after all.
    """
    if h.dim() < 2:
        raise ValueError(f"h must have shape [B, Hd, ...], got {tuple(h.shape)}")
    if bias is not None and tuple(bias.shape) != tuple(h.shape[:2]):
        raise ValueError(f"bias must have shape {tuple(h.shape[:2])} ([B, Hd]), got {tuple(bias.shape)}")
    if bias is not None and bias.device != h.device:
        raise ValueError(f"h and bias must be on one device, got {h.device} and {bias.device}")
    resolved = resolve_backend(backend, h, bias)
    if resolved == "triton":
        return cond_bias_elu_fused(h, bias, "triton")
    if resolved == "torch" and _use_cpu_kernels(h, bias):
        return cond_bias_elu_fused(h, bias, "cpu", reuse_input)
    return cond_bias_elu_reference(h, bias)
