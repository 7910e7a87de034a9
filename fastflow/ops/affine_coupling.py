"""Conditional affine coupling with a tanh-bounded scale (and its additive variant).

Density direction (x to y):  y_a = x_a,  y_b = s * x_b + mu,  s = 1 + alpha * tanh(u / 2),
logdet = sum over the transformed elements of log s, per sample.
Inverse (y to x):            x_b = (y_b - mu) / s,  logdet = -sum log s.

The channel partition is given by index arithmetic, never by split/cat copies:

- ``split="continuous"``, ``order="up"``: transform the last ``Cb`` channels (condition on the first).
- ``split="continuous"``, ``order="down"``: transform the first ``Cb`` channels.
- ``split="skip"``, ``order="up"``: transform the odd channels (condition on the even ones).
- ``split="skip"``, ``order="down"``: transform the even channels.

``Cb = mu.shape[1]`` is the number of transformed channels (``C // 2`` for the step couplings,
``C // F`` for the split-prior coupling). A skip split needs ``Cb == C // 2`` and an even ``C``; for
odd ``C`` the layers pass ``split="continuous"`` instead, as the paper's code does.

Shapes: x, y ``[B, C, *S]`` (images ``[B, C, H, W]``, vectors ``[B, C]``); mu, u ``[B, Cb, *S]``;
logdet ``[B]``. ``u=None`` gives the additive coupling (logdet 0).

The Triton path (:class:`AffineCouplingFunction`, kernels in ``fastflow.kernels.affine_coupling``)
reads x, mu and u through their strides (a ``chunk`` of a conditioning-net output costs no copy),
writes y and the per-sample logdet in one pass and recomputes s from u in the backward, so it saves
only its inputs. float16/bfloat16 inputs are computed in float32 and give a float32 logdet.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from fastflow.ops._backend import resolve_backend

SPLITS = ("continuous", "skip")
ORDERS = ("up", "down")


def transformed_channels(num_channels: int, num_transformed: int, split: str, order: str) -> slice:
    """The channels of a ``num_channels`` tensor that the coupling transforms, as a slice."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")
    if not 0 < num_transformed < num_channels:
        raise ValueError(
            f"a coupling over {num_channels} channels must transform between 1 and "
            f"{num_channels - 1} of them, got {num_transformed}"
        )
    if split == "skip":
        if num_channels % 2 or num_transformed != num_channels // 2:
            raise ValueError(
                f"a skip split needs an even channel count and C//2 transformed channels, got "
                f"C={num_channels}, Cb={num_transformed}; odd counts use split='continuous'"
            )
        return slice(1, None, 2) if order == "up" else slice(0, None, 2)
    if order == "up":
        return slice(num_channels - num_transformed, num_channels)
    return slice(0, num_transformed)


def conditioning_channels(num_channels: int, num_transformed: int, split: str, order: str) -> slice:
    """The channels the coupling conditions on (the complement of ``transformed_channels``)."""
    transformed = transformed_channels(num_channels, num_transformed, split, order)
    if split == "skip":
        return slice(0, None, 2) if order == "up" else slice(1, None, 2)
    if order == "up":
        return slice(0, transformed.start)
    return slice(transformed.stop, num_channels)


def coupling_scale(u: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = 1 + alpha * tanh(u / 2)`` and ``log s``, computed in float32 or wider.

    For ``alpha == 1``, ``s = 2 * sigmoid(u)`` and ``log s = log 2 - softplus(-u)``, which stays
    finite for any finite u; for ``alpha < 1``, s lies in ``[1 - alpha, 1 + alpha]``.
    """
    u = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u
    if alpha == 1.0:
        log_s = math.log(2.0) - torch.nn.functional.softplus(-u)
        return torch.exp(log_s), log_s
    s = 1.0 + alpha * torch.tanh(u * 0.5)
    return s, torch.log(s)


def _check(x: torch.Tensor, mu: torch.Tensor, u: torch.Tensor | None, alpha: float) -> None:
    if x.dim() < 2:
        raise ValueError(f"coupling input must be [B, C, ...], got shape {tuple(x.shape)}")
    expected = (x.shape[0], mu.shape[1], *x.shape[2:])
    if tuple(mu.shape) != expected:
        raise ValueError(f"mu must have shape {expected} (Cb transformed channels), got {tuple(mu.shape)}")
    if u is not None and u.shape != mu.shape:
        raise ValueError(f"u must have the shape of mu {tuple(mu.shape)}, got {tuple(u.shape)}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    devices = {t.device for t in (x, mu, u) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"x, mu and u must be on one device, got {sorted(map(str, devices))}")


def _split(x: torch.Tensor, num_transformed: int, split: str, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_a, x_b)``: the conditioning and the transformed channels of x, as slices (views)."""
    idx = transformed_channels(x.shape[1], num_transformed, split, order)
    return x[:, conditioning_channels(x.shape[1], num_transformed, split, order)], x[:, idx]


def _join(x_a: torch.Tensor, y_b: torch.Tensor, split: str, order: str) -> torch.Tensor:
    """The inverse of :func:`_split`, with ``torch.cat`` (continuous) or interleaving ``torch.stack``
    (skip), as the paper's code joins the halves."""
    if split == "skip":
        even, odd = (x_a, y_b) if order == "up" else (y_b, x_a)
        return torch.stack([even, odd], dim=2).flatten(1, 2)
    return torch.cat([x_a, y_b] if order == "up" else [y_b, x_a], dim=1)


def affine_coupling_reference(
    x: torch.Tensor, mu: torch.Tensor, u: torch.Tensor | None, split: str, order: str, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch density direction, written as the paper's code writes it: slice x into its
    halves, scale then shift x_b, join the halves with ``torch.cat``; see the module docstring."""
    x_a, x_b = _split(x, mu.shape[1], split, order)
    if u is None:
        return _join(x_a, x_b + mu, split, order), x.new_zeros(
            x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32)
        )
    s, log_s = coupling_scale(u, alpha)
    y_b = (x_b * s + mu).to(x.dtype)
    return _join(x_a, y_b, split, order), log_s.flatten(1).sum(1)


def affine_coupling_inverse_reference(
    y: torch.Tensor, mu: torch.Tensor, u: torch.Tensor | None, split: str, order: str, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch generation direction (slices, unshift then unscale, ``torch.cat``)."""
    y_a, y_b = _split(y, mu.shape[1], split, order)
    if u is None:
        return _join(y_a, y_b - mu, split, order), y.new_zeros(
            y.shape[0], dtype=torch.promote_types(y.dtype, torch.float32)
        )
    s, log_s = coupling_scale(u, alpha)
    x_b = ((y_b - mu) / s).to(y.dtype)
    return _join(y_a, x_b, split, order), -log_s.flatten(1).sum(1)


def _as_bcp(t: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, C, *S]`` as ``[B, C, P]`` (a view whenever the strides allow it)."""
    return None if t is None else t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


class AffineCouplingFunction(torch.autograd.Function):
    """Fused coupling in either direction, with its backward; inputs are ``[B, C, P]`` views.

    ``forward(x, mu, u, start, stride, alpha, inverse) -> (out [B, C, P], logdet [B])``: the
    transformed channels are ``start + j * stride``; ``inverse=False`` is the density direction
    x -> y, ``inverse=True`` the generation direction y -> x (then ``x`` holds y).
    """

    @staticmethod
    def forward(ctx, x, mu, u, start: int, stride: int, alpha: float, inverse: bool):
        from fastflow.kernels.affine_coupling import coupling_apply

        out, logdet = coupling_apply(x, mu, u, start, stride, alpha, inverse)
        ctx.save_for_backward(x, mu, u)
        ctx.layout = (start, stride, alpha, inverse)
        return out, logdet

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_logdet):
        from fastflow.kernels.affine_coupling import coupling_backward

        x, mu, u = ctx.saved_tensors
        d_in, d_mu, d_u = coupling_backward(x, mu, u, grad_out, grad_logdet, *ctx.layout)
        return d_in, d_mu, d_u, None, None, None, None


def affine_coupling_triton(
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    split: str,
    order: str,
    alpha: float,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused op on ``[B, C, *S]`` tensors, either direction; see the module docstring."""
    idx = transformed_channels(x.shape[1], mu.shape[1], split, order)
    out, logdet = AffineCouplingFunction.apply(
        _as_bcp(x), _as_bcp(mu), _as_bcp(u), idx.start, idx.step or 1, float(alpha), inverse
    )
    return out.view(x.shape), logdet


def affine_coupling(
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None = None,
    split: str = "continuous",
    order: str = "up",
    alpha: float = 1.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density direction x -> y of the coupling; returns ``(y [B, C, *S], logdet [B])``."""
    _check(x, mu, u, alpha)
    if resolve_backend(backend, x, mu, u) == "triton":
        return affine_coupling_triton(x, mu, u, split, order, alpha)
    return affine_coupling_reference(x, mu, u, split, order, alpha)


def affine_coupling_inverse(
    y: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None = None,
    split: str = "continuous",
    order: str = "up",
    alpha: float = 1.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generation direction y -> x of the coupling; returns ``(x [B, C, *S], logdet [B])``."""
    _check(y, mu, u, alpha)
    if resolve_backend(backend, y, mu, u) == "triton":
        return affine_coupling_triton(y, mu, u, split, order, alpha, inverse=True)
    return affine_coupling_inverse_reference(y, mu, u, split, order, alpha)
