"""Weight normalisation: ``w = g * v / max(||v_o||, NORM_EPS)``, the norm per output unit o.

v ``[O, *rest]`` (a linear layer's ``[O, I]``, a convolution's ``[O, I, kh, kw]``), g ``[O]`` -> w of
v's shape and dtype; ``||v_o||`` is the Euclidean norm of ``v[o]`` over all its other dimensions.

Implementations (:mod:`fastflow.ops.backends`):

- ``"triton"``: :class:`WeightNormFunction`, one kernel forward and one backward that gives the
  gradients of v and g together (kernels in ``fastflow.kernels.weight_norm``, whose docstring states
  the backward's formulas); saves v and g;
- ``"reference"`` (and ``"cpu"``, which has no implementation of its own):
  :func:`weight_norm_reference`, the norm, the clamp, a division and a product in plain PyTorch,
  which torch.compile fuses.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from fastflow.ops import backends
from fastflow.ops._launcher import launcher

NORM_EPS = 1e-12  # a row's norm is clamped to at least this before dividing by it


def normalised_rows(v: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch: ``v / max(||v_o||, NORM_EPS)`` per output unit o (v ``[O, *rest]``)."""
    norm = v.flatten(1).norm(dim=1).clamp_min(NORM_EPS)
    return v / norm.view(-1, *([1] * (v.dim() - 1)))


def weight_norm_reference(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch: ``normalised_rows(v) * g`` (g broadcast over v's other dimensions)."""
    return normalised_rows(v) * g.view(-1, *([1] * (v.dim() - 1)))


@launcher("weight_norm", lambda v, g, eps: v.new_empty(v.shape))
def triton_forward(v: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """``fastflow.kernels.weight_norm.weight_norm_forward`` on v ``[O, K]``: contiguous w ``[O, K]``."""
    from fastflow.kernels.weight_norm import weight_norm_forward

    return weight_norm_forward(v, g, eps)


@launcher("weight_norm_backward", lambda v, g, grad_w, eps: (v.new_empty(v.shape), g.new_empty(g.shape)))
def triton_backward(
    v: torch.Tensor, g: torch.Tensor, grad_w: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_v [O, K], grad_g [O])`` from v ``[O, K]``, g and grad_w ``[O, K]``, in one kernel."""
    from fastflow.kernels.weight_norm import weight_norm_backward

    return weight_norm_backward(v, g, grad_w, eps)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``[O, *rest]`` as ``[O, K]`` (a view where the strides allow)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


class WeightNormFunction(torch.autograd.Function):
    """``g * v / max(||v_o||, NORM_EPS)`` for v ``[O, *rest]`` and g ``[O]``, with the Triton kernels,
    which see v as ``[O, K]``; w is contiguous."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v, g)
        return triton_forward(_rows(v), g, NORM_EPS).view(v.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_w: torch.Tensor):
        v, g = ctx.saved_tensors
        grad_v, grad_g = triton_backward(_rows(v), g, _rows(grad_w), NORM_EPS)
        return grad_v.view(v.shape), grad_g


def weight_norm(v: torch.Tensor, g: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``g * v / max(||v_o||, NORM_EPS)`` per output unit; see the module docstring."""
    if v.dim() < 2:
        raise ValueError(f"v must have shape [O, ...] with at least 2 dimensions, got {tuple(v.shape)}")
    if tuple(g.shape) != (v.shape[0],):
        raise ValueError(f"g must have shape ({v.shape[0]},) ([O]), got {tuple(g.shape)}")
    if g.device != v.device or g.dtype != v.dtype:
        raise ValueError(f"v and g must share device and dtype, got {v.device} {v.dtype} and {g.device} {g.dtype}")
    if backends.select("weight_norm", backend, v, g) == "triton":
        return WeightNormFunction.apply(v, g)
    return weight_norm_reference(v, g)
