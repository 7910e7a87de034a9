"""The coupling network's middle: ``elu(conv1x1(h) + bias[:, :, None, None])``.

h ``[B, C_in, H, W]``, weight ``[C_out, C_in]`` (a 1x1 convolution's kernel without its two unit
dimensions), bias ``[B, C_out]`` (FC(z) per sample and channel) or None -> ``[B, C_out, H, W]`` in
h's dtype. Direction-free (it sits inside the conditioning network, not in the flow).

Implementations (:mod:`fastflow.ops.backends`):

- ``"triton"``: :class:`Conv1x1BiasEluFunction`, one GEMM kernel with bias and ELU in its epilogue
  forward, and two backward GEMMs (input and weight gradient) that form ``g = dout * elu'`` from
  the saved output in their prologues, so neither the pre-activation nor g is ever written to
  memory (kernels in ``fastflow.kernels.conv1x1_bias_elu``). Saves h, the weight and the output.
- ``"cpu"``: ``conv2d``, then :func:`fastflow.ops.cond_bias_elu.cond_bias_elu` with the ``"cpu"``
  backend (the extension's bias + ELU, one pass each way, written over the convolution's output).
- ``"reference"``: ``conv2d``, then ``h + bias`` and ``F.elu`` (:func:`conv1x1_bias_elu_reference`).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from fastflow.ops import backends
from fastflow.ops._launcher import absent, accumulation_dtype, kept, launcher
from fastflow.ops.cond_bias_elu import cond_bias_elu, cond_bias_elu_reference


def _check(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if h.dim() != 4:
        raise ValueError(f"h must have shape [B, C_in, H, W], got {tuple(h.shape)}")
    if weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"weight must have shape [C_out, {h.shape[1]}] ([C_out, C_in]), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (h.shape[0], weight.shape[0]):
        raise ValueError(f"bias must have shape {(h.shape[0], weight.shape[0])} ([B, C_out]), got {tuple(bias.shape)}")
    devices = {t.device for t in (h, weight, bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"h, weight and bias must be on one device, got {sorted(map(str, devices))}")


def _conv(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(h, weight.view(*weight.shape, 1, 1))


def conv1x1_bias_elu_reference(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain PyTorch, as the paper's code computes it: ``conv2d``, add the bias, ``F.elu``."""
    return cond_bias_elu_reference(_conv(h, weight), bias)


@launcher("conv1x1_bias_elu", lambda h, weight, bias: h.new_empty((h.shape[0], weight.shape[0], h.shape[2])))
def triton_forward(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``fastflow.kernels.conv1x1_bias_elu.conv1x1_bias_elu_forward`` on h ``[B, C_in, P]``."""
    from fastflow.kernels.conv1x1_bias_elu import conv1x1_bias_elu_forward

    return conv1x1_bias_elu_forward(h, weight, bias)


def _fake_grad_input(out, grad_out, weight, bias_grad):
    grad_h = out.new_empty((out.shape[0], weight.shape[1], out.shape[2]))
    grad_bias = out.new_empty(out.shape[:2], dtype=accumulation_dtype(out, weight)) if bias_grad else absent(out)
    return grad_h, grad_bias


@launcher("conv1x1_bias_elu_grad_input", _fake_grad_input)
def triton_grad_input(
    out: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, bias_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fastflow.kernels.conv1x1_bias_elu.grad_input``: ``(grad_h, grad_bias)``, grad_bias empty
    without ``bias_grad``."""
    from fastflow.kernels.conv1x1_bias_elu import grad_input

    grad_h, grad_bias = grad_input(out, grad_out, weight, bias_grad)
    return grad_h, grad_bias if grad_bias is not None else absent(out)


@launcher(
    "conv1x1_bias_elu_grad_weight",
    lambda out, grad_out, h: out.new_empty((out.shape[1], h.shape[1]), dtype=accumulation_dtype(out, h)),
)
def triton_grad_weight(out: torch.Tensor, grad_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``fastflow.kernels.conv1x1_bias_elu.grad_weight``."""
    from fastflow.kernels.conv1x1_bias_elu import grad_weight

    return grad_weight(out, grad_out, h)


class Conv1x1BiasEluFunction(torch.autograd.Function):
    """``elu(weight @ h[b] + bias[b, :, None])`` for h ``[B, C_in, P]``, weight ``[C_out, C_in]``,
    bias ``[B, C_out]`` or None, with the Triton kernels; returns a contiguous ``[B, C_out, P]``."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        matrix = weight.to(h.dtype) if h.dtype in (torch.float16, torch.bfloat16) else weight
        out = triton_forward(h, matrix, bias)
        ctx.save_for_backward(h, matrix, out)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        h, matrix, out = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        grad_h = grad_bias = grad_w = None
        bias_grad = bias_dtype is not None and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[0] or bias_grad:
            grad_h, grad_bias = triton_grad_input(out, grad_out, matrix, bias_grad)
            grad_bias = kept(grad_bias, bias_grad)
        if ctx.needs_input_grad[1]:
            grad_w = triton_grad_weight(out, grad_out, h).to(weight_dtype)
        return (
            grad_h if ctx.needs_input_grad[0] else None,
            grad_w,
            None if grad_bias is None else grad_bias.to(bias_dtype),
        )


def conv1x1_bias_elu_triton(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """:class:`Conv1x1BiasEluFunction` on h ``[B, C_in, H, W]``; the result is contiguous NCHW."""
    batch, c_in, height, width = h.shape
    out = Conv1x1BiasEluFunction.apply(h.reshape(batch, c_in, height * width), weight, bias)
    return out.view(batch, weight.shape[0], height, width)


def conv1x1_bias_elu(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto"
) -> torch.Tensor:
    """``elu(conv1x1(h, weight) + bias[:, :, None, None])``; see the module docstring."""
    _check(h, weight, bias)
    implementation = backends.select("conv1x1_bias_elu", backend, h, weight, bias)
    if implementation == "triton":
        if torch.is_autocast_enabled(h.device.type):  # the conv's autocast rule: low-precision operands
            h = h.to(torch.get_autocast_dtype(h.device.type))
        return conv1x1_bias_elu_triton(h, weight, bias)  # the kernels add the bias in float32, any dtype
    if implementation == "reference":
        return conv1x1_bias_elu_reference(h, weight, bias)
    pre = _conv(h, weight)
    return cond_bias_elu(pre, None if bias is None else bias.to(pre.dtype), backend="cpu", reuse_input=True)
