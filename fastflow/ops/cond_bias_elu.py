"""The middle step of the coupling network: ELU(conv1x1 output + FC(z) per channel).

h ``[B, Hd, *S]`` (``[B, Hd, H, W]`` in image couplings, ``[B, Hd]`` in vector ones), bias ``[B, Hd]``
(or None for no condition) -> ``elu(h + bias[:, :, None, ...])``, ``[B, Hd, *S]`` in h's dtype. The
op is direction-free (it sits inside the conditioning network, not in the flow).

:class:`CondBiasEluFunction` makes one pass forward and one backward, and saves only its output
(``elu'`` is recovered from it), so the sum ``h + bias`` is never materialised. Its kernels are the
Triton ones (``fastflow.kernels.cond_bias_elu``) for ``backend="triton"``, and the C++ ones of the
``"cpu"`` backend (:mod:`fastflow.ops.cpu.cond_bias_elu`), which take h stored as planes (NCHW) or as
rows (channels-last) and keep that layout. Where neither takes a call, :func:`cond_bias_elu_reference`
runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from fastflow.ops import backends
from fastflow.ops._launcher import absent, kept, launcher
from fastflow.ops.cpu import cond_bias_elu as cpu
from fastflow.ops.cpu.storage import planes_or_rows


def cond_bias_elu_reference(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain PyTorch: ``elu(h + bias[:, :, None, ...])``, in h's dtype."""
    dtype = h.dtype
    if bias is not None:
        h = h + bias.view(*bias.shape, *([1] * (h.dim() - 2)))
    return torch.nn.functional.elu(h).to(dtype)


@launcher("cond_bias_elu", lambda h, bias: torch.empty(h.shape, dtype=h.dtype, device=h.device))
def triton_forward(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``fastflow.kernels.cond_bias_elu.cond_bias_elu_forward``: h ``[B, Hd, P]`` -> contiguous out."""
    from fastflow.kernels.cond_bias_elu import cond_bias_elu_forward

    return cond_bias_elu_forward(h, bias)


def _fake_backward(out, grad_out, bias_dtype):
    grad_bias = out.new_empty(out.shape[:2], dtype=bias_dtype) if bias_dtype is not None else absent(out)
    return torch.empty(out.shape, dtype=out.dtype, device=out.device), grad_bias


@launcher("cond_bias_elu_backward", _fake_backward)
def _triton_backward_op(
    out: torch.Tensor, grad_out: torch.Tensor, bias_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    from fastflow.kernels.cond_bias_elu import cond_bias_elu_backward

    grad_h, grad_bias = cond_bias_elu_backward(out, grad_out, bias_dtype)
    return grad_h, grad_bias if grad_bias is not None else absent(out)


def triton_backward(
    out: torch.Tensor, grad_out: torch.Tensor, bias_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grad_h, grad_bias or None)`` from the output ``[B, Hd, P]``, with the Triton kernel."""
    grad_h, grad_bias = _triton_backward_op(out, grad_out, bias_dtype)
    return grad_h, kept(grad_bias, bias_dtype is not None)


# implementation -> (forward, backward), each on [B, Hd, P] views
KERNELS: dict[str, tuple[Callable, Callable]] = {
    "triton": (triton_forward, triton_backward),
    "cpu": (cpu.forward, cpu.backward),
}


class CondBiasEluFunction(torch.autograd.Function):
    """``elu(h + bias[:, :, None, ...])`` for h ``[B, Hd, *S]`` and bias ``[B, Hd]`` or None, with the
    kernels ``KERNELS[kernels]`` (``"triton"`` or ``"cpu"``), which see h as ``[B, Hd, P]``.

    ``reuse_input``: the CPU kernels write the result over h (contiguous or channels-last) and return
    h itself, marked dirty, so autograd refuses any backward that still needed h's old values."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, bias: torch.Tensor | None, kernels: str, reuse_input: bool) -> torch.Tensor:
        forward_kernel, _ = KERNELS[kernels]
        if reuse_input and kernels == "cpu" and planes_or_rows(h):
            cpu.elu_in_place(h, bias)
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
        _, backward_kernel = KERNELS[ctx.kernels]
        (out,) = ctx.saved_tensors
        bias_dtype = ctx.bias_dtype if ctx.needs_input_grad[1] else None
        shape = (out.shape[0], out.shape[1], math.prod(out.shape[2:]))
        grad_h, grad_bias = backward_kernel(out.reshape(shape), grad_out.reshape(shape), bias_dtype)
        return grad_h.view(out.shape), grad_bias, None, None


def cond_bias_elu(
    h: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto", reuse_input: bool = False
) -> torch.Tensor:
    """``elu(h + bias[:, :, None, ...])`` in one pass; see the module docstring.

    ``reuse_input=True`` lets the op write the result over h when it can (the CPU kernels on an h
    stored as planes or channels-last; the others compute out of place): pass it for an h that
    nothing needs afterwards, such as a GEMM's fresh output, to save a pass of memory. Autograd
    refuses the backward if something did need h after all. Triton's result is contiguous; the CPU
    kernels keep a channels-last h channels-last.
    """
    if h.dim() < 2:
        raise ValueError(f"h must have shape [B, Hd, ...], got {tuple(h.shape)}")
    if bias is not None and tuple(bias.shape) != tuple(h.shape[:2]):
        raise ValueError(f"bias must have shape {tuple(h.shape[:2])} ([B, Hd]), got {tuple(bias.shape)}")
    if bias is not None and bias.device != h.device:
        raise ValueError(f"h and bias must be on one device, got {h.device} and {bias.device}")
    implementation = backends.select("cond_bias_elu", backend, h, bias)
    if implementation == "reference":
        return cond_bias_elu_reference(h, bias)
    return CondBiasEluFunction.apply(h, bias, implementation, reuse_input and implementation == "cpu")
