"""Conditional affine coupling with a choice of scale function (and its additive variant).

Density direction (x to y):  y_a = x_a,  y_b = s * x_b + mu  (``shift_first``: y_b = s * (x_b + mu)),
logdet = sum over the transformed elements of log s, per sample.
Inverse (y to x):            x_b = (y_b - mu) / s  (``shift_first``: x_b = y_b / s - mu),
logdet = -sum log s.

The scale ``s = f(u)`` (:class:`CouplingScale`):

- ``"tanh"`` (Wolf): ``s = 1 + alpha * tanh(u / 2)``, alpha in (0, 1];
- ``"sigmoid"`` (Glow: openai/glow, rosinality/glow-pytorch): ``s = sigmoid(u + offset)``, offset 2;
- ``"exp"`` (RealNVP): ``s = exp(u)``, or with ``clamp=c`` the soft clamp ``exp(c * tanh(u / c))``;
- ``"additive"`` (NICE): no u, ``y_b = x_b + mu``, logdet 0;

and ``reciprocal=True`` uses ``1 / f(u)`` instead (normflows' "sigmoid" coupling divides by the
sigmoid). log s is computed without taking the log of an underflowed s: finite for every finite u.

The channel partition is given by index arithmetic, never by split/cat copies:

- ``split="continuous"``, ``order="up"``: transform the last ``Cb`` channels (condition on the first).
- ``split="continuous"``, ``order="down"``: transform the first ``Cb`` channels.
- ``split="skip"``, ``order="up"``: transform the odd channels (condition on the even ones).
- ``split="skip"``, ``order="down"``: transform the even channels.

``Cb = mu.shape[1]`` is the number of transformed channels (``C // 2`` for the step couplings,
``C // F`` for the split-prior coupling). A skip split needs ``Cb == C // 2`` and an even ``C``; for
odd ``C`` the layers pass ``split="continuous"`` instead, as the paper's code does.

Implementations (:mod:`fastflow.ops.backends`): ``"reference"`` runs the plain-PyTorch references
(slices, the scale, and ``torch.cat``, as the papers' code computes a coupling); ``"triton"`` the
fused Triton kernels; ``"cpu"`` the extension's C++ kernels (:mod:`fastflow.ops.cpu.affine_coupling`:
the same formulas and the same autograd Function) on CPU tensors of float32, float64 or bfloat16.

Shapes: x, y ``[B, C, *S]`` (images ``[B, C, H, W]``, vectors ``[B, C]``); mu, u ``[B, Cb, *S]``;
logdet ``[B]``. ``u=None`` gives the additive coupling (logdet 0). Instead of mu and u, the whole
output of a conditioning network may be passed as ``params`` ``[B, 2 Cb, *S]`` with its ``layout``:
``"shift_scale"`` (mu = first Cb channels, u = last Cb: Wolf), ``"scale_shift"`` (u first: Glow) or
``"interleaved"`` (mu = even channels, u = odd ones: normflows); ``[B, Cb, *S]`` mu for the additive
coupling. The fused op then reads mu and u in place and returns their gradient as one buffer of
params' shape, so the network's last layer gets one gradient tensor (no zeros + slice-copy assembly).

``actnorm=(log_scale, bias)`` (each ``[C]``) folds an ActNorm that follows the coupling into it: the
output is ``out * exp(log_scale) + bias`` on every channel and the logdet gains ``P * sum(log_scale)``
(P pixels per channel), as :func:`fastflow.ops.actnorm.actnorm` after the coupling computes it, in
either direction (it always acts on the function's output). The fused path writes the normalised
output in the coupling's one pass and, in the backward, sums the ActNorm's parameter gradients in the
same kernel; it saves the ActNorm's own passes over the tensor, forward and backward.

The fused path (:class:`AffineCouplingFunction`, Triton kernels in ``fastflow.kernels.affine_coupling``
with the scale function a compile-time constant, or the C++ CPU kernels) reads x, mu and u through
their strides, writes y and the per-sample logdet in one pass and recomputes s from u in the
backward, so it saves only its inputs. With ``inplace=True`` (no autograd recording) y overwrites x
and only the transformed channels are written (all of them with ``actnorm``). float16/bfloat16
inputs are computed in float32 and give a float32 logdet. The CPU kernels take mu and u in x's
dtype: narrower ones (bfloat16 from an autocast network beside a float32 x) are cast up first, as
the reference's type promotion does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from fastflow.ops import backends
from fastflow.ops._launcher import accumulation_dtype, kept, launcher
from fastflow.ops.actnorm import actnorm as actnorm_reference
from fastflow.ops.actnorm import actnorm_logdet
from fastflow.ops.cpu import affine_coupling as cpu

SPLITS = ("continuous", "skip")
ORDERS = ("up", "down")
SCALES = ("tanh", "sigmoid", "exp", "additive")
LAYOUTS = ("shift_scale", "scale_shift", "interleaved")


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


@dataclass(frozen=True)
class CouplingScale:
    """The scale function ``s = f(u)`` of a coupling (see the module docstring for each ``kind``).

    ``alpha`` is used by "tanh", ``offset`` by "sigmoid", ``clamp`` (None: no clamp) by "exp".
    """

    kind: str = "tanh"
    alpha: float = 1.0
    offset: float = 2.0
    clamp: float | None = None
    reciprocal: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SCALES:
            raise ValueError(f"unknown scale {self.kind!r}; expected one of {SCALES}")
        if self.kind == "tanh" and not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in (0, 1], got {self.alpha}")
        if self.kind == "sigmoid" and not math.isfinite(self.offset):
            raise ValueError(f"the sigmoid offset must be finite, got {self.offset}")
        if self.kind == "exp" and self.clamp is not None and not 0.0 < self.clamp < math.inf:
            raise ValueError(f"the exp clamp must be a positive number or None, got {self.clamp}")

    @property
    def additive(self) -> bool:
        return self.kind == "additive"

    def log_scale(self, u: torch.Tensor) -> torch.Tensor:
        """``log s`` in float32 or wider, finite for every finite u."""
        u = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u
        if self.kind == "tanh":
            if self.alpha == 1.0:
                log_s = math.log(2.0) - F.softplus(-u)
            else:
                log_s = torch.log(1.0 + self.alpha * torch.tanh(u * 0.5))
        elif self.kind == "sigmoid":
            log_s = F.logsigmoid(u + self.offset)
        else:
            log_s = u if self.clamp is None else self.clamp * torch.tanh(u / self.clamp)
        return -log_s if self.reciprocal else log_s

    def terms(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, log s)`` of u, in float32 or wider."""
        log_s = self.log_scale(u)
        if self.kind == "sigmoid" and not self.reciprocal:
            return torch.sigmoid(u.to(log_s.dtype) + self.offset), log_s
        if self.kind == "tanh" and self.alpha != 1.0 and not self.reciprocal:
            return 1.0 + self.alpha * torch.tanh(u.to(log_s.dtype) * 0.5), log_s
        return torch.exp(log_s), log_s

    def kernel_form(self, shift_first: bool) -> tuple[int, float, bool, bool, bool]:
        """``(scale code, param, special, reciprocal, shift_first)`` for the Triton kernels."""
        if self.kind == "tanh":
            return 0, self.alpha, self.alpha == 1.0, self.reciprocal, shift_first
        if self.kind == "sigmoid":
            return 1, self.offset, False, self.reciprocal, shift_first
        return 2, self.clamp or 1.0, self.clamp is None, self.reciprocal, shift_first


def as_scale(scale: str | CouplingScale, alpha: float = 1.0) -> CouplingScale:
    """A :class:`CouplingScale` from a kind name (with Wolf's ``alpha`` for "tanh") or itself."""
    if isinstance(scale, CouplingScale):
        return scale
    if not isinstance(scale, str):
        raise TypeError(f"scale must be a str or CouplingScale, got {type(scale).__name__}")
    return CouplingScale(scale, alpha=alpha)


def split_params(params: torch.Tensor, layout: str, additive: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """mu and u as views of a conditioning network's output ``[B, 2 Cb, *S]`` (``[B, Cb, *S]`` additive)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown params layout {layout!r}; expected one of {LAYOUTS}")
    if params.dim() < 2:
        raise ValueError(f"params must be [B, 2 Cb, ...], got shape {tuple(params.shape)}")
    if additive:
        return params, None
    if params.shape[1] % 2:
        raise ValueError(f"params of an affine coupling need an even channel count (mu and u), got {params.shape[1]}")
    cb = params.shape[1] // 2
    if layout == "shift_scale":
        return params[:, :cb], params[:, cb:]
    if layout == "scale_shift":
        return params[:, cb:], params[:, :cb]
    return params[:, 0::2], params[:, 1::2]


ActNormParams = tuple[torch.Tensor, torch.Tensor]  # (log_scale [C], bias [C])


def _check(
    x: torch.Tensor, mu: torch.Tensor, u: torch.Tensor | None, scale: CouplingScale, actnorm: ActNormParams | None
) -> None:
    if x.dim() < 2:
        raise ValueError(f"coupling input must be [B, C, ...], got shape {tuple(x.shape)}")
    expected = (x.shape[0], mu.shape[1], *x.shape[2:])
    if tuple(mu.shape) != expected:
        raise ValueError(f"mu must have shape {expected} (Cb transformed channels), got {tuple(mu.shape)}")
    if u is not None and u.shape != mu.shape:
        raise ValueError(f"u must have the shape of mu {tuple(mu.shape)}, got {tuple(u.shape)}")
    if scale.additive and u is not None:
        raise ValueError("an additive coupling takes no u; pass u=None")
    if actnorm is not None:
        if len(actnorm) != 2:
            raise ValueError(f"actnorm must be (log_scale, bias), got {len(actnorm)} tensors")
        for name, t in zip(("log_scale", "bias"), actnorm):
            if tuple(t.shape) != (x.shape[1],):
                raise ValueError(
                    f"actnorm {name} must have shape ({x.shape[1]},), one value per channel, got {tuple(t.shape)}"
                )
    devices = {t.device for t in (x, mu, u, *(actnorm or ())) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"x, mu, u and actnorm must be on one device, got {sorted(map(str, devices))}")


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
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    split: str,
    order: str,
    alpha: float = 1.0,
    scale: str | CouplingScale = "tanh",
    shift_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch density direction, written as the papers' code writes it: slice x into its
    halves, scale and shift x_b, join the halves with ``torch.cat``; see the module docstring."""
    x_a, x_b = _split(x, mu.shape[1], split, order)
    if u is None:
        zeros = x.new_zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32))
        return _join(x_a, x_b + mu, split, order), zeros
    s, log_s = as_scale(scale, alpha).terms(u)
    y_b = ((x_b + mu) * s if shift_first else x_b * s + mu).to(x.dtype)
    return _join(x_a, y_b, split, order), log_s.flatten(1).sum(1)


def affine_coupling_inverse_reference(
    y: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    split: str,
    order: str,
    alpha: float = 1.0,
    scale: str | CouplingScale = "tanh",
    shift_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch generation direction (slices, undo shift and scale, ``torch.cat``)."""
    y_a, y_b = _split(y, mu.shape[1], split, order)
    if u is None:
        zeros = y.new_zeros(y.shape[0], dtype=torch.promote_types(y.dtype, torch.float32))
        return _join(y_a, y_b - mu, split, order), zeros
    s, log_s = as_scale(scale, alpha).terms(u)
    x_b = (y_b / s - mu if shift_first else (y_b - mu) / s).to(y.dtype)
    return _join(y_a, x_b, split, order), -log_s.flatten(1).sum(1)


def _as_bcp(t: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, C, *S]`` as ``[B, C, P]`` (a view whenever the strides allow it)."""
    return None if t is None else t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def _fake_apply(x, mu, u, start, stride, scale, param, special, reciprocal, shift_first, inverse, affine):
    return x.new_empty(x.shape), x.new_empty(x.shape[0], dtype=accumulation_dtype(x, mu, u))


@launcher("coupling_apply", _fake_apply)
def triton_apply(
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    start: int,
    stride: int,
    scale: int,
    param: float,
    special: bool,
    reciprocal: bool,
    shift_first: bool,
    inverse: bool,
    affine: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, logdet)`` of x ``[B, C, P]`` in a new output (``fastflow.kernels.affine_coupling``); the
    transformed channels are ``start + j * stride``; ``scale`` to ``shift_first`` are
    :meth:`CouplingScale.kernel_form`."""
    from fastflow.kernels.affine_coupling import coupling_apply

    form = (scale, param, special, reciprocal, shift_first)
    return coupling_apply(x, mu, u, start, stride, form, inverse, affine=affine)


@launcher("coupling_backward", cpu.fake_backward)
def triton_backward(
    x: torch.Tensor,
    mu: torch.Tensor,
    u: torch.Tensor | None,
    grad_out: torch.Tensor,
    grad_logdet: torch.Tensor,
    start: int,
    stride: int,
    scale: int,
    param: float,
    special: bool,
    reciprocal: bool,
    shift_first: bool,
    inverse: bool,
    layout: int,
    affine: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d x, d params, d affine)`` (d affine empty without ``affine``): the kernels write dmu and du
    into views of one new buffer, ordered as the params layout ``LAYOUTS[layout]`` orders mu and u
    (no zeros + slice-copy assembly)."""
    from fastflow.kernels import _common
    from fastflow.kernels.affine_coupling import coupling_backward

    d_params = _common.new_output((x.shape[0], mu.shape[1] * (1 if u is None else 2), x.shape[2]), mu.dtype, x.device)
    d_mu, d_u = split_params(d_params, LAYOUTS[layout], additive=u is None)
    form = (scale, param, special, reciprocal, shift_first)
    d_in, _, _, d_affine = coupling_backward(
        x, mu, u, grad_out, grad_logdet, start, stride, form, inverse, d_mu=d_mu, d_u=d_u, affine=affine
    )
    return d_in, d_params, d_affine if d_affine is not None else x.new_empty(0)


# implementation -> (apply, backward), with the arguments of triton_apply and triton_backward
KERNELS: dict[str, tuple[Callable, Callable]] = {
    "triton": (triton_apply, triton_backward),
    "cpu": (cpu.coupling_apply, cpu.coupling_backward),
}


class AffineCouplingFunction(torch.autograd.Function):
    """Fused coupling in either direction, with its backward; inputs are ``[B, C, P]`` views.

    ``forward(x, mu, u, params, affine, layout, start, stride, form, inverse, kernels) -> (out
    [B, C, P], logdet [B])``: either mu and u (u None: additive) or ``params`` with its ``layout``
    (None: params is the additive coupling's mu); mu and u are then views of params, and the backward
    returns one gradient of params' shape. ``affine`` ``[2, C]`` (or None), in the accumulation dtype,
    maps each output channel c to ``affine[0, c] * out + affine[1, c]`` (a folded ActNorm). The
    transformed channels are ``start + j * stride``; ``form`` is :meth:`CouplingScale.kernel_form`;
    ``inverse=False`` is the density direction x -> y, ``inverse=True`` the generation direction
    y -> x (then ``x`` holds y); ``kernels`` is ``"triton"`` or ``"cpu"`` (``KERNELS``).
    """

    @staticmethod
    def forward(
        ctx, x, mu, u, params, affine, layout: str, start: int, stride: int, form: tuple, inverse: bool, kernels: str
    ):
        if params is not None:
            mu, u = split_params(params, layout or "shift_scale", additive=layout is None)
        out, logdet = KERNELS[kernels][0](x, mu, u, start, stride, *form, inverse, affine)
        ctx.save_for_backward(x, mu, u, params, affine)
        ctx.call = (start, stride, form, inverse, layout, kernels)
        return out, logdet

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_logdet):
        x, mu, u, params, affine = ctx.saved_tensors
        start, stride, form, inverse, layout, kernels = ctx.call
        order = 0 if params is None else LAYOUTS.index(layout or "shift_scale")
        d_in, d_params, d_affine = KERNELS[kernels][1](  # dmu and du are views of one buffer
            x, mu, u, grad_out, grad_logdet, start, stride, *form, inverse, order, affine
        )
        d_affine = kept(d_affine, affine is not None)
        none = (None,) * 6
        if params is None:
            cb = mu.shape[1]
            return d_in, d_params[:, :cb], kept(d_params[:, cb:], u is not None), None, d_affine, *none
        return d_in, None, None, d_params, d_affine, *none


def _in_dtype(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _resolve_params(
    mu: torch.Tensor | None,
    u: torch.Tensor | None,
    params: torch.Tensor | None,
    layout: str,
    scale: CouplingScale,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if params is None:
        if mu is None:
            raise ValueError("the coupling needs mu (and u), or params")
        return mu, u
    if mu is not None or u is not None:
        raise ValueError("pass either mu and u or params, not both")
    return split_params(params, layout, scale.additive)


def _run(
    x: torch.Tensor,
    mu: torch.Tensor | None,
    u: torch.Tensor | None,
    split: str,
    order: str,
    scale: CouplingScale,
    backend: str,
    shift_first: bool,
    params: torch.Tensor | None,
    layout: str,
    inplace: bool,
    inverse: bool,
    actnorm: ActNormParams | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    mu_, u_ = _resolve_params(mu, u, params, layout, scale)
    _check(x, mu_, u_, scale, actnorm)
    inputs = (x, mu_, u_, params, *(actnorm or ()))
    if inplace and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        raise ValueError("inplace=True overwrites the input and records no graph; use it under torch.no_grad()")
    idx = transformed_channels(x.shape[1], mu_.shape[1], split, order)
    kernels = backends.select("affine_coupling", backend, x, mu_, u_)
    if kernels == "cpu":
        if mu_.dtype != x.dtype or (u_ is not None and u_.dtype != x.dtype):  # narrower: cast up
            mu, u, params = _in_dtype(mu, x.dtype), _in_dtype(u, x.dtype), _in_dtype(params, x.dtype)
            mu_, u_ = _resolve_params(mu, u, params, layout, scale)
    if kernels == "reference":
        ref = affine_coupling_inverse_reference if inverse else affine_coupling_reference
        out, logdet = ref(x, mu_, u_, split, order, scale=scale, shift_first=shift_first)
        if actnorm is not None:
            out, actnorm_ld = actnorm_reference(out, *actnorm)
            logdet = logdet + actnorm_ld
        return (_write_back(x, out, idx, actnorm is not None) if inplace else out), logdet
    form = scale.kernel_form(shift_first)
    start, stride = idx.start, idx.step or 1
    affine = None
    if actnorm is not None:
        acc = accumulation_dtype(x, mu_, u_)
        affine = torch.stack([actnorm[0].to(acc).exp(), actnorm[1].to(acc)])
    if inplace and _viewable(x):
        flat = x.view(x.shape[0], x.shape[1], -1)
        out, logdet = x, _apply_inplace(flat, mu_, u_, start, stride, form, inverse, kernels, affine)
    else:
        if params is not None:
            layout_ = None if scale.additive else layout
            packed = (None, None, _as_bcp(params), affine, layout_)
        else:
            packed = (_as_bcp(mu_), _as_bcp(u_), None, affine, None)
        out, logdet = AffineCouplingFunction.apply(_as_bcp(x), *packed, start, stride, form, inverse, kernels)
        out = out.view(x.shape)
        if inplace:  # x is not viewable as [B, C, P]
            out = _write_back(x, out, idx, actnorm is not None)
    if actnorm is not None:
        logdet = logdet + actnorm_logdet(x, actnorm[0])
    return out, logdet


def _write_back(x: torch.Tensor, out: torch.Tensor, idx: slice, all_channels: bool) -> torch.Tensor:
    """x with the channels the op changed (all, or the transformed ``idx``) copied from out."""
    if all_channels:
        return x.copy_(out)
    x[:, idx] = out[:, idx]
    return x


def _apply_inplace(flat, mu, u, start: int, stride: int, form: tuple, inverse: bool, kernels: str, affine):
    """The coupling written over ``flat [B, C, P]`` (transformed channels only without ``affine``);
    returns the logdet."""
    if kernels == "cpu":
        return cpu.coupling_apply_inplace(flat, _as_bcp(mu), _as_bcp(u), start, stride, form, inverse, affine)
    from fastflow.kernels.affine_coupling import coupling_apply

    return coupling_apply(flat, _as_bcp(mu), _as_bcp(u), start, stride, form, inverse, out=flat, affine=affine)[1]


def _viewable(x: torch.Tensor) -> bool:
    """Whether ``x`` ``[B, C, *S]`` can be viewed as ``[B, C, P]`` (so a kernel can write into it)."""
    try:
        x.view(x.shape[0], x.shape[1], -1)
    except RuntimeError:
        return False
    return True


def affine_coupling(
    x: torch.Tensor,
    mu: torch.Tensor | None = None,
    u: torch.Tensor | None = None,
    split: str = "continuous",
    order: str = "up",
    alpha: float = 1.0,
    backend: str = "auto",
    *,
    scale: str | CouplingScale = "tanh",
    shift_first: bool = False,
    params: torch.Tensor | None = None,
    layout: str = "shift_scale",
    inplace: bool = False,
    actnorm: ActNormParams | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density direction x -> y of the coupling; returns ``(y [B, C, *S], logdet [B])``.

    ``scale`` is a kind name (``alpha`` applies to "tanh") or a :class:`CouplingScale`; ``params``
    and ``layout`` replace mu and u; ``inplace`` (no grad only) writes y into x; ``actnorm``
    ``(log_scale, bias)`` applies an ActNorm to y in the same pass. See the module docstring.
    """
    scale = as_scale(scale, alpha)
    return _run(x, mu, u, split, order, scale, backend, shift_first, params, layout, inplace, False, actnorm)


def affine_coupling_inverse(
    y: torch.Tensor,
    mu: torch.Tensor | None = None,
    u: torch.Tensor | None = None,
    split: str = "continuous",
    order: str = "up",
    alpha: float = 1.0,
    backend: str = "auto",
    *,
    scale: str | CouplingScale = "tanh",
    shift_first: bool = False,
    params: torch.Tensor | None = None,
    layout: str = "shift_scale",
    inplace: bool = False,
    actnorm: ActNormParams | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generation direction y -> x of the coupling; returns ``(x [B, C, *S], logdet [B])``.

    Arguments as for :func:`affine_coupling`; with ``inplace`` x overwrites y; ``actnorm`` applies
    an ActNorm (its density direction) to x.
    """
    scale = as_scale(scale, alpha)
    return _run(y, mu, u, split, order, scale, backend, shift_first, params, layout, inplace, True, actnorm)
