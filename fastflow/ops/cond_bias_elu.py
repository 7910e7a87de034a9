"""The middle step of the coupling network: ELU(conv1x1 output + FC(z) per channel).

h ``[B, Hd, *S]`` (``[B, Hd, H, W]`` in image couplings, ``[B, Hd]`` in vector ones), bias ``[B, Hd]``
(or None for no condition) -> ``[B, Hd, *S]`` in h's dtype. The op is direction-free (it sits inside
the conditioning network, not in the flow).

The Triton path (:class:`CondBiasEluFunction`, kernels in ``fastflow.kernels.cond_bias_elu``) makes
one pass forward and one backward, and saves only its output (``elu'`` is recovered from it), so the
sum ``h + bias`` is never materialised.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from fastflow.ops._backend import resolve_backend


def cond_bias_elu_reference(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain PyTorch: ``elu(h + bias[:, :, None, ...])``, in h's dtype."""
    dtype = h.dtype
    if bias is not None:
        h = h + bias.view(*bias.shape, *([1] * (h.dim() - 2)))
    return torch.nn.functional.elu(h).to(dtype)


class CondBiasEluFunction(torch.autograd.Function):
    """``elu(h + bias[:, :, None])`` for h ``[B, Hd, P]`` and bias ``[B, Hd]`` or None."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        from fastflow.kernels.cond_bias_elu import cond_bias_elu_forward

        out = cond_bias_elu_forward(h, bias)
        ctx.save_for_backward(out)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        from fastflow.kernels.cond_bias_elu import cond_bias_elu_backward

        (out,) = ctx.saved_tensors
        bias_dtype = ctx.bias_dtype if ctx.needs_input_grad[1] else None
        return cond_bias_elu_backward(out, grad_out, bias_dtype)


def cond_bias_elu_triton(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The fused op on ``[B, Hd, *S]``; the result is contiguous."""
    out = CondBiasEluFunction.apply(h.reshape(h.shape[0], h.shape[1], math.prod(h.shape[2:])), bias)
    return out.view(h.shape)


def cond_bias_elu(h: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """``elu(h + bias[:, :, None, None])`` in one pass; see the module docstring."""
    if h.dim() < 2:
        raise ValueError(f"h must have shape [B, Hd, ...], got {tuple(h.shape)}")
    if bias is not None and tuple(bias.shape) != tuple(h.shape[:2]):
        raise ValueError(f"bias must have shape {tuple(h.shape[:2])} ([B, Hd]), got {tuple(bias.shape)}")
    if bias is not None and bias.device != h.device:
        raise ValueError(f"h and bias must be on one device, got {h.device} and {bias.device}")
    if resolve_backend(backend, h, bias) == "triton":
        return cond_bias_elu_triton(h, bias)
    return cond_bias_elu_reference(h, bias)
