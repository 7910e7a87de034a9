"""The Triton kernel launchers as PyTorch custom operators, so that ``torch.compile`` sees through them.

Each launcher of ``fastflow.kernels`` that the autograd Functions of ``fastflow.ops`` call is registered
as an operator ``fastflow_triton::<name>`` with a fake (meta) implementation that gives the output
shapes and dtypes. While ``torch.compile`` traces, the functions here call those operators: the tracer
records them as opaque nodes with known outputs (no graph break, and CUDA graphs replay their kernels);
in eager mode they call the launchers directly, so eager steps pay no dispatcher overhead. The
operators return new tensors only (an absent gradient is an empty tensor inside them). The affine
coupling's ``form`` tuple is passed as its five scalars, and its packed-params backward allocates the
one gradient buffer inside the operator (the eager launcher writes dmu and du into views of it), so no
operator mutates its arguments.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

LIBRARY = "fastflow_triton"


def _kernels(name: str) -> ModuleType:
    return importlib.import_module(f"fastflow.kernels.{name}")


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


# ---- actnorm + 1x1 convolution ----


@torch.library.custom_op(f"{LIBRARY}::pixel_affine", mutates_args=())
def _pixel_affine_op(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _kernels("actnorm_conv1x1").pixel_affine(x, matrix, bias)


@_pixel_affine_op.register_fake
def _(x, matrix, bias):
    return x.new_empty((x.shape[0], matrix.shape[0], x.shape[2]))


@torch.library.custom_op(f"{LIBRARY}::outer_sum", mutates_args=())
def _outer_sum_op(dy: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels("actnorm_conv1x1").outer_sum(dy, x)


@_outer_sum_op.register_fake
def _(dy, x):
    acc = torch.float64 if torch.float64 in (dy.dtype, x.dtype) else torch.float32
    return dy.new_empty((dy.shape[1], x.shape[1]), dtype=acc), dy.new_empty(dy.shape[1], dtype=acc)


def pixel_affine(x, matrix, bias=None):
    """``fastflow.kernels.actnorm_conv1x1.pixel_affine``, traceable by torch.compile."""
    if torch.compiler.is_compiling():
        return _pixel_affine_op(x, matrix, bias)
    return _kernels("actnorm_conv1x1").pixel_affine(x, matrix, bias)


def outer_sum(dy, x):
    """``fastflow.kernels.actnorm_conv1x1.outer_sum``, traceable by torch.compile."""
    if torch.compiler.is_compiling():
        return _outer_sum_op(dy, x)
    return _kernels("actnorm_conv1x1").outer_sum(dy, x)


# ---- bias + ELU ----


@torch.library.custom_op(f"{LIBRARY}::cond_bias_elu", mutates_args=())
def _cond_bias_elu_op(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _kernels("cond_bias_elu").cond_bias_elu_forward(h, bias)


@_cond_bias_elu_op.register_fake
def _(h, bias):
    return torch.empty(h.shape, dtype=h.dtype, device=h.device)


@torch.library.custom_op(f"{LIBRARY}::cond_bias_elu_backward", mutates_args=())
def _cond_bias_elu_backward_op(
    out: torch.Tensor, grad_out: torch.Tensor, bias_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_h, grad_bias = _kernels("cond_bias_elu").cond_bias_elu_backward(out, grad_out, bias_dtype)
    return grad_h, grad_bias if grad_bias is not None else _empty(out)


@_cond_bias_elu_backward_op.register_fake
def _(out, grad_out, bias_dtype):
    grad_bias = out.new_empty(out.shape[:2], dtype=bias_dtype) if bias_dtype is not None else _empty(out)
    return torch.empty(out.shape, dtype=out.dtype, device=out.device), grad_bias


def cond_bias_elu_forward(h, bias):
    """``fastflow.kernels.cond_bias_elu.cond_bias_elu_forward``, traceable by torch.compile."""
    if torch.compiler.is_compiling():
        return _cond_bias_elu_op(h, bias)
    return _kernels("cond_bias_elu").cond_bias_elu_forward(h, bias)


def cond_bias_elu_backward(out, grad_out, bias_dtype):
    """``fastflow.kernels.cond_bias_elu.cond_bias_elu_backward``, traceable by torch.compile."""
    if torch.compiler.is_compiling():
        grad_h, grad_bias = _cond_bias_elu_backward_op(out, grad_out, bias_dtype)
        return grad_h, grad_bias if bias_dtype is not None else None
    return _kernels("cond_bias_elu").cond_bias_elu_backward(out, grad_out, bias_dtype)


# ---- 1x1 convolution + bias + ELU ----


def _acc(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@torch.library.custom_op(f"{LIBRARY}::conv1x1_bias_elu", mutates_args=())
def _conv1x1_bias_elu_op(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _kernels("conv1x1_bias_elu").conv1x1_bias_elu_forward(h, weight, bias)


@_conv1x1_bias_elu_op.register_fake
def _(h, weight, bias):
    return h.new_empty((h.shape[0], weight.shape[0], h.shape[2]))


@torch.library.custom_op(f"{LIBRARY}::conv1x1_bias_elu_grad_input", mutates_args=())
def _conv1x1_grad_input_op(
    out: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, bias_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_h, grad_bias = _kernels("conv1x1_bias_elu").grad_input(out, grad_out, weight, bias_grad)
    return grad_h, grad_bias if grad_bias is not None else _empty(out)


@_conv1x1_grad_input_op.register_fake
def _(out, grad_out, weight, bias_grad):
    grad_h = out.new_empty((out.shape[0], weight.shape[1], out.shape[2]))
    grad_bias = out.new_empty(out.shape[:2], dtype=_acc(out, weight)) if bias_grad else _empty(out)
    return grad_h, grad_bias


@torch.library.custom_op(f"{LIBRARY}::conv1x1_bias_elu_grad_weight", mutates_args=())
def _conv1x1_grad_weight_op(out: torch.Tensor, grad_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return _kernels("conv1x1_bias_elu").grad_weight(out, grad_out, h)


@_conv1x1_grad_weight_op.register_fake
def _(out, grad_out, h):
    return out.new_empty((out.shape[1], h.shape[1]), dtype=_acc(out, h))


def conv1x1_bias_elu_forward(h, weight, bias):
    """``fastflow.kernels.conv1x1_bias_elu.conv1x1_bias_elu_forward``, traceable by torch.compile."""
    if torch.compiler.is_compiling():
        return _conv1x1_bias_elu_op(h, weight, bias)
    return _kernels("conv1x1_bias_elu").conv1x1_bias_elu_forward(h, weight, bias)


def conv1x1_bias_elu_grad_input(out, grad_out, weight, bias_grad: bool):
    """``fastflow.kernels.conv1x1_bias_elu.grad_input``, traceable by torch.compile."""
    if torch.compiler.is_compiling():
        grad_h, grad_bias = _conv1x1_grad_input_op(out, grad_out, weight, bias_grad)
        return grad_h, grad_bias if bias_grad else None
    return _kernels("conv1x1_bias_elu").grad_input(out, grad_out, weight, bias_grad)


def conv1x1_bias_elu_grad_weight(out, grad_out, h):
    """``fastflow.kernels.conv1x1_bias_elu.grad_weight``, traceable by torch.compile."""
    if torch.compiler.is_compiling():
        return _conv1x1_grad_weight_op(out, grad_out, h)
    return _kernels("conv1x1_bias_elu").grad_weight(out, grad_out, h)


# ---- affine coupling ----

CouplingForm = tuple[int, float, bool, bool, bool]  # (scale code, param, special, reciprocal, shift_first)


def _coupling_acc(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


@torch.library.custom_op(f"{LIBRARY}::coupling_apply", mutates_args=())
def _coupling_apply_op(
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    start: int,
    stride: int,
    code: int,
    param: float,
    special: bool,
    reciprocal: bool,
    shift_first: bool,
    inverse: bool,
    affine: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    form = (code, param, special, reciprocal, shift_first)
    return _kernels("affine_coupling").coupling_apply(x, mu, u, start, stride, form, inverse, affine=affine)


@_coupling_apply_op.register_fake
def _(x, mu, u, start, stride, code, param, special, reciprocal, shift_first, inverse, affine):
    return x.new_empty(x.shape), x.new_empty(x.shape[0], dtype=_coupling_acc(x, mu, u))


def _affine_grad_fake(x: torch.Tensor, affine: torch.Tensor | None) -> torch.Tensor:
    return affine.new_empty(affine.shape) if affine is not None else _empty(x)


@torch.library.custom_op(f"{LIBRARY}::coupling_backward", mutates_args=())
def _coupling_backward_op(
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    grad_out: torch.Tensor,
    grad_logdet: torch.Tensor,
    start: int,
    stride: int,
    code: int,
    param: float,
    special: bool,
    reciprocal: bool,
    shift_first: bool,
    inverse: bool,
    affine: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    form = (code, param, special, reciprocal, shift_first)
    d_in, d_mu, d_u, d_affine = _kernels("affine_coupling").coupling_backward(
        x, mu, u, grad_out, grad_logdet, start, stride, form, inverse, affine=affine
    )
    return d_in, d_mu, _or_empty(d_u, x), _or_empty(d_affine, x)


@_coupling_backward_op.register_fake
def _(x, mu, u, grad_out, grad_logdet, start, stride, code, param, special, reciprocal, shift_first, inverse, affine):
    d_u = u.new_empty(u.shape) if u is not None else _empty(x)
    return x.new_empty(x.shape), mu.new_empty(mu.shape), d_u, _affine_grad_fake(x, affine)


@torch.library.custom_op(f"{LIBRARY}::coupling_backward_packed", mutates_args=())
def _coupling_backward_packed_op(
    x: torch.Tensor,
    params: torch.Tensor,
    grad_out: torch.Tensor,
    grad_logdet: torch.Tensor,
    layout: str,
    additive: bool,
    start: int,
    stride: int,
    code: int,
    param: float,
    special: bool,
    reciprocal: bool,
    shift_first: bool,
    inverse: bool,
    affine: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    form = (code, param, special, reciprocal, shift_first)
    d_in, d_params, d_affine = _coupling_backward_packed(
        x, params, grad_out, grad_logdet, layout, additive, start, stride, form, inverse, affine
    )
    return d_in, d_params, _or_empty(d_affine, x)


@_coupling_backward_packed_op.register_fake
def _(
    x,
    params,
    grad_out,
    grad_logdet,
    layout,
    additive,
    start,
    stride,
    code,
    param,
    special,
    reciprocal,
    shift_first,
    inverse,
    affine,
):
    return x.new_empty(x.shape), params.new_empty(params.shape), _affine_grad_fake(x, affine)


def _or_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return t if t is not None else _empty(like)


def _or_none(t: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor | None:
    return t if present is not None else None


def _coupling_backward_packed(x, params, grad_out, grad_logdet, layout, additive, start, stride, form, inverse, affine):
    """Gradients with respect to x, the packed ``params`` and ``affine``: dmu and du are written into
    views of one new buffer of params' shape (no zeros + slice-copy assembly)."""
    from fastflow.kernels import _common
    from fastflow.ops.affine_coupling import split_params

    mu, u = split_params(params, layout, additive)
    d_params = _common.new_output(params.shape, params.dtype, params.device)
    d_mu, d_u = split_params(d_params, layout, additive)
    d_in, _, _, d_affine = _kernels("affine_coupling").coupling_backward(
        x, mu, u, grad_out, grad_logdet, start, stride, form, inverse, d_mu=d_mu, d_u=d_u, affine=affine
    )
    return d_in, d_params, d_affine


def coupling_apply(x, mu, u, start: int, stride: int, form: CouplingForm, inverse: bool, affine=None):
    """``fastflow.kernels.affine_coupling.coupling_apply`` (new output), traceable by torch.compile."""
    if torch.compiler.is_compiling():
        return _coupling_apply_op(x, mu, u, start, stride, *form, inverse, affine)
    return _kernels("affine_coupling").coupling_apply(x, mu, u, start, stride, form, inverse, affine=affine)


def coupling_backward(
    x, mu, u, grad_out, grad_logdet, start: int, stride: int, form: CouplingForm, inverse: bool, affine=None
):
    """``fastflow.kernels.affine_coupling.coupling_backward`` (new buffers): ``(d x, d mu, d u,
    d affine)``, traceable by torch.compile."""
    if torch.compiler.is_compiling():
        d_in, d_mu, d_u, d_affine = _coupling_backward_op(
            x, mu, u, grad_out, grad_logdet, start, stride, *form, inverse, affine
        )
        return d_in, d_mu, _or_none(d_u, u), _or_none(d_affine, affine)
    return _kernels("affine_coupling").coupling_backward(
        x, mu, u, grad_out, grad_logdet, start, stride, form, inverse, affine=affine
    )


def coupling_backward_packed(
    x,
    params,
    grad_out,
    grad_logdet,
    layout: str,
    additive: bool,
    start: int,
    stride: int,
    form: CouplingForm,
    inverse: bool,
    affine=None,
):
    """Gradients of the packed-params coupling, ``(d x, d params, d affine)``, traceable by torch.compile."""
    if torch.compiler.is_compiling():
        d_in, d_params, d_affine = _coupling_backward_packed_op(
            x, params, grad_out, grad_logdet, layout, additive, start, stride, *form, inverse, affine
        )
        return d_in, d_params, _or_none(d_affine, affine)
    return _coupling_backward_packed(
        x, params, grad_out, grad_logdet, layout, additive, start, stride, form, inverse, affine
    )
