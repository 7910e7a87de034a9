"""Wolf's coupling network on the CPU as one autograd Function over channels-last rows: the ``"cpu"``
implementation of :class:`fastflow.flows.coupling.CouplingNet2d` (op name ``"coupling_net"``).

x ``[B, C_in, H, W]`` (any layout), weights as the modules hold them, bias ``[B, Hd]`` (FC(z)) or
None -> ``[B, C_out, H', W']`` contiguous, where, with ``conv`` the stride-1 cross-correlation:

    h1  = elu(conv(x, w_in, padding_in))         im2col(x) @ w_in^T       [B*H'*W', Hd] rows
    h2  = elu(h1 @ w_mid^T + bias[b])             the 1x1 conv_mid          [B*H'*W', Hd] rows
    out = conv(h2, w_out, 'same') + b_out         col2im(h2 @ flip(w_out)^T)

The GEMMs and patches are those of :mod:`fastflow.ops.cpu.conv_rows`, the ELUs those of
:mod:`fastflow.ops.cpu.cond_bias_elu`. :class:`CouplingNetRowsFunction` runs them with one
hand-written backward, so that a network costs one autograd node and one Python call each way. The
ELUs are written over the GEMMs' fresh outputs; the backward recovers ``elu'`` from them (1 where the
output is > 0, else output + 1), so it saves x, h1, h2 and the weights.

Under CPU autocast the GEMMs, and so the output, are in its dtype (as autocast runs ``conv2d``),
and every gradient is returned in its input's dtype.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from fastflow.ops import backends
from fastflow.ops.cpu.cond_bias_elu import elu_backward_from_output, elu_in_place
from fastflow.ops.cpu.conv_rows import patches, product_to_channels_last, same_padding, sum_patches
from fastflow.ops.cpu.storage import to_rows

backends.register_cpu("coupling_net", lambda x, *rest: x.device.type == "cpu")


def _flipped_rows(w_out: torch.Tensor) -> torch.Tensor:
    """``w_out [C_out, Hd, k, k]`` flipped and laid out as ``[C_out*k*k, Hd]``, rows ordered (c, i, j):
    the matrix whose product with h's rows col2im sums into ``conv(h, w_out, 'same')``."""
    c_out, hidden, k, _ = w_out.shape
    return w_out.flip(2, 3).permute(0, 2, 3, 1).reshape(c_out * k * k, hidden)


def _weight_from_flipped_rows(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The adjoint of :func:`_flipped_rows`: ``[C_out*k*k, Hd]`` back to ``[C_out, Hd, k, k]``."""
    c_out, hidden, k, _ = shape
    return grad.view(c_out, k, k, hidden).permute(0, 3, 1, 2).flip(2, 3)


def _elu_backward_rows(
    out: torch.Tensor, grad_rows: torch.Tensor, bias_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`elu_backward_from_output` for a channels-last ``out [B, Hd, H, W]`` and the gradient as
    rows ``[B*H*W, Hd]`` (a GEMM's fresh output, overwritten); returns the input's gradient as rows
    and the bias's ``[B, Hd]`` (or None)."""
    batch, hidden, height, width = out.shape
    pixels = height * width
    grad_h, grad_bias = elu_backward_from_output(
        out.view(batch, hidden, pixels),
        grad_rows.view(batch, pixels, hidden).transpose(1, 2),
        bias_grad,
        reuse_grad=True,
    )
    return grad_h.transpose(1, 2).reshape(-1, hidden), grad_bias


class CouplingNetRowsFunction(torch.autograd.Function):
    """:func:`coupling_net_rows`'s forward and backward (see the module docstring)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(
        ctx,
        x: torch.Tensor,
        w_in: torch.Tensor,
        w_mid: torch.Tensor,
        bias: torch.Tensor | None,
        w_out: torch.Tensor,
        b_out: torch.Tensor | None,
        padding_in: int,
    ) -> torch.Tensor:
        batch, _, height, width = x.shape
        hidden, _, k_in, _ = w_in.shape
        k_out = w_out.shape[2]
        out_h, out_w = height + 2 * padding_in - k_in + 1, width + 2 * padding_in - k_in + 1
        h1 = product_to_channels_last(patches(x, k_in, padding_in), w_in.reshape(hidden, -1).t(), batch, out_h, out_w)
        elu_in_place(h1, None)
        h2 = product_to_channels_last(to_rows(h1), w_mid.t(), batch, out_h, out_w)
        elu_in_place(h2, None if bias is None else bias.to(h2.dtype))
        flipped = _flipped_rows(w_out)
        out = sum_patches(to_rows(h2) @ flipped.t(), batch, (out_h, out_w), k_out, k_out // 2)
        if b_out is not None:  # out of place: torch 2.11's torch.compile zeroes every gradient of a
            # Function whose forward writes in place over the tensor it returns (eager and torch 2.14 do not)
            out = out + b_out.to(out.dtype).view(1, -1, 1, 1)
        ctx.save_for_backward(x, w_in, w_mid, h1, h2, flipped)
        ctx.geometry = (padding_in, w_out.shape, None if bias is None else bias.dtype, b_out is not None)
        return out

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")  # under the forward's autocast state (bfloat16 GEMMs alike)
    def backward(ctx, grad_out: torch.Tensor):
        x, w_in, w_mid, h1, h2, flipped = ctx.saved_tensors
        padding_in, w_out_shape, bias_dtype, has_b_out = ctx.geometry
        need_x, need_w_in, need_w_mid, need_bias, need_w_out, need_b_out, _ = ctx.needs_input_grad
        hidden, _, k_in, _ = w_in.shape
        k_out = w_out_shape[2]
        grad_w_in = grad_w_mid = grad_bias = grad_w_out = grad_b_out = grad_x = None
        if has_b_out and need_b_out:
            grad_b_out = grad_out.sum((0, 2, 3))
        grad_patches = patches(grad_out, k_out, k_out // 2)  # col2im's adjoint
        if need_w_out:
            grad_w_out = _weight_from_flipped_rows(grad_patches.t() @ to_rows(h2), w_out_shape)
        if not (need_x or need_w_in or need_w_mid or need_bias):
            return grad_x, grad_w_in, grad_w_mid, grad_bias, grad_w_out, grad_b_out, None
        grad_h2, grad_bias = _elu_backward_rows(h2, grad_patches @ flipped, bias_dtype is not None and need_bias)
        if need_w_mid:
            grad_w_mid = grad_h2.t() @ to_rows(h1)
        if need_x or need_w_in:
            grad_h1, _ = _elu_backward_rows(h1, grad_h2 @ w_mid, False)
            if need_w_in:
                grad_w_in = (grad_h1.t() @ patches(x, k_in, padding_in)).view(w_in.shape)
            if need_x:
                grad_patches_x = grad_h1 @ w_in.reshape(hidden, -1)
                grad_x = sum_patches(grad_patches_x, x.shape[0], tuple(x.shape[2:]), k_in, padding_in)
        return (
            grad_x,
            grad_w_in,
            grad_w_mid,
            None if grad_bias is None else grad_bias.to(bias_dtype),
            grad_w_out,
            grad_b_out,
            None,
        )


def coupling_net_rows(
    x: torch.Tensor,
    w_in: torch.Tensor,
    w_mid: torch.Tensor,
    bias: torch.Tensor | None,
    w_out: torch.Tensor,
    b_out: torch.Tensor | None,
    padding_in: int,
) -> torch.Tensor:
    """The coupling network (module docstring) for x ``[B, C_in, H, W]``, w_in ``[Hd, C_in, k, k]``,
    w_mid ``[Hd, Hd]``, bias ``[B, Hd]`` or None, w_out ``[C_out, Hd, k', k']`` with 'same' padding
    and b_out ``[C_out]`` or None; returns a contiguous ``[B, C_out, H', W']``."""
    same_padding(w_out)
    hidden = w_in.shape[0]
    if x.dim() != 4 or w_in.dim() != 4 or w_in.shape[1] != x.shape[1]:
        raise ValueError(
            f"coupling_net_rows expects x [B, C_in, H, W] and w_in [Hd, C_in, k, k], got {tuple(x.shape)} and "
            f"{tuple(w_in.shape)}"
        )
    if tuple(w_mid.shape) != (hidden, hidden) or w_out.shape[1] != hidden:
        raise ValueError(
            f"coupling_net_rows expects w_mid [{hidden}, {hidden}] and w_out [C_out, {hidden}, k, k], got "
            f"{tuple(w_mid.shape)} and {tuple(w_out.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (x.shape[0], hidden):
        raise ValueError(f"bias must have shape {(x.shape[0], hidden)} ([B, Hd]), got {tuple(bias.shape)}")
    return CouplingNetRowsFunction.apply(x, w_in, w_mid, bias, w_out, b_out, padding_in)
