"""Conditional affine couplings for images and vectors: Wolf's, Glow's, RealNVP's, NICE's.

Density direction: the coupling reads the conditioning channels x_a (and the conditioning input,
Wolf's z), computes ``params = net(x_a, cond)`` (``net(x_a)`` when cond is None, so any
``nn.Module`` works as conditioner), reads mu and u out of params without copies (``layout``) and
applies the coupling to the transformed channels x_b with a scale function (Wolf's tanh by default,
Glow's sigmoid, RealNVP's exp, or the additive variant), all in one fused op
(:mod:`fastflow.ops.affine_coupling`, whose docstring states the formulas). Which channels are x_a
and x_b is set by ``split`` ("continuous" or "skip") and ``order`` ("up" or "down"). A skip split
over an odd channel count becomes continuous, as in the paper's code. The last layer of every stock
net starts at zero, so every coupling starts as the identity.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fastflow.flows.base import Flow, Recomputed
from fastflow.functional import (
    affine_coupling,
    affine_coupling_inverse,
    cond_bias_elu,
    conditioning_channels,
    conv1x1_bias_elu,
    transformed_channels,
)
from fastflow.nn import WeightNormConv2d, WeightNormLinear
from fastflow.ops import backends
from fastflow.ops.affine_coupling import CouplingScale, as_scale
from fastflow.ops.cpu.coupling_net import coupling_net_rows

TRANSFORMS = ("affine", "additive")


class CouplingNet2d(nn.Module):
    """conv3x3 -> ELU -> conv1x1 (+ FC(z) per channel) -> ELU -> weight-normed conv3x3.

    The middle three are one fused op (:func:`fastflow.functional.conv1x1_bias_elu`); ``conv_mid`` keeps
    its ``nn.Conv2d`` parameter (``[hidden, hidden, 1, 1]``) so the state dict is unchanged. Where
    :func:`fastflow.ops.backends.select` picks the ``"cpu"`` implementation of ``"coupling_net"`` (CPU
    tensors) the whole network is one autograd Function over channels-last rows
    (:func:`fastflow.ops.cpu.coupling_net.coupling_net_rows`), which returns NCHW.

    ``[B, c_in, H, W]`` (and z ``[B, dz]``) -> ``[B, c_out, H, W]``; the last conv starts at zero.
    """

    def __init__(self, c_in: int, c_out: int, hidden: int, z_dim: int = 0) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(c_in, hidden, 3, padding=1, bias=False)
        self.conv_mid = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.z_proj = nn.Linear(z_dim, hidden) if z_dim else None
        self.conv_out = WeightNormConv2d(hidden, c_out, 3, padding=1, zero_init=True)
        self.backend = "auto"

    def _cond_bias(self, z: torch.Tensor | None) -> torch.Tensor | None:
        """FC(z) ``[B, hidden]``. Where the Triton op takes it, in z's dtype with autocast off: the
        op reads a float32 bias, so autocast's casts of z, the FC weight and bias, and of their
        gradients, would only add kernel launches."""
        if self.z_proj is None or z is None:
            return None
        device = z.device.type
        if torch.is_autocast_enabled(device) and backends.select("conv1x1_bias_elu", self.backend, z) == "triton":
            with torch.autocast(device, enabled=False):
                return self.z_proj(z)
        return self.z_proj(z)

    def forward(self, x_a: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        bias = self._cond_bias(z)
        w_mid = self.conv_mid.weight.flatten(1)
        if backends.select("coupling_net", self.backend, x_a) == "cpu":
            w_out = self.conv_out.weight()
            return coupling_net_rows(x_a, self.conv_in.weight, w_mid, bias, w_out, self.conv_out.bias, padding_in=1)
        h = cond_bias_elu(self.conv_in(x_a), None, backend=self.backend, reuse_input=True)
        return self.conv_out(conv1x1_bias_elu(h, w_mid, bias, backend=self.backend))


class CouplingNet1d(nn.Module):
    """Linear -> ELU -> Linear -> ELU -> weight-normed Linear, ``[B, f_in] -> [B, f_out]``.

    The first two linears start with zero bias; the last layer starts at zero.
    """

    def __init__(self, f_in: int, f_out: int, hidden: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(f_in, hidden)
        self.fc_mid = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.fc_in.bias)
        nn.init.zeros_(self.fc_mid.bias)
        self.fc_out = WeightNormLinear(hidden, f_out, zero_init=True)

    def forward(self, x_a: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc_out(F.elu(self.fc_mid(F.elu(self.fc_in(x_a)))))


class AffineCoupling(Flow):
    """A coupling over ``[B, C, *S]`` that transforms ``num_transformed`` channels (default C // 2).

    ``net`` maps the conditioning channels ``[B, C - Cb, *S]`` (and ``cond``, when given) to
    ``params [B, 2 Cb, *S]`` (``[B, Cb, *S]`` additive) holding mu and u as ``layout`` says:
    "shift_scale" (mu first, Wolf), "scale_shift" (u first, Glow) or "interleaved" (normflows).
    ``scale`` is a :class:`~fastflow.ops.affine_coupling.CouplingScale` or a kind name ("tanh"
    takes ``alpha``); ``transform="additive"`` is the scale "additive". ``reverse=True`` makes
    ``forward`` apply the op's generation direction and ``inverse`` its density direction, as
    libraries whose couplings are written in the generation direction need.
    """

    def __init__(
        self,
        num_channels: int,
        net: nn.Module,
        split: str = "continuous",
        order: str = "up",
        num_transformed: int | None = None,
        transform: str = "affine",
        alpha: float = 1.0,
        *,
        scale: str | CouplingScale = "tanh",
        shift_first: bool = False,
        layout: str = "shift_scale",
        reverse: bool = False,
    ) -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown coupling transform {transform!r}; expected one of {TRANSFORMS}")
        if split == "skip" and num_channels % 2:
            split = "continuous"
        self.num_channels = num_channels
        self.num_transformed = num_transformed or num_channels // 2
        self.split, self.order = split, order
        self.scale = CouplingScale("additive") if transform == "additive" else as_scale(scale, alpha)
        self.transform = "additive" if self.scale.additive else "affine"
        self.shift_first, self.layout, self.reverse = shift_first, layout, reverse
        self.net = net
        self.backend = "auto"
        self._cond_idx = conditioning_channels(num_channels, self.num_transformed, split, order)
        self._trans_idx = transformed_channels(num_channels, self.num_transformed, split, order)

    def _params(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"coupling expects [B, {self.num_channels}, ...], got shape {tuple(x.shape)}")
        return self._params_from(x[:, self._cond_idx], cond)

    def _params_from(self, x_a: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.net(x_a) if cond is None else self.net(x_a, cond)

    writes_in_place = True

    def folds_actnorm(self) -> bool:
        """On fused kernels (any backend but "reference", the paper's way) forward folds a following
        ActNorm into the coupling's pass."""
        return self.backend != "reference"

    def _transform(
        self,
        x: torch.Tensor,
        params: torch.Tensor,
        generation: bool,
        inplace: bool = False,
        actnorm: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The density formula (``generation=False``) or the generation formula, honouring ``reverse``,
        then ``actnorm`` on the result."""
        op = affine_coupling_inverse if generation != self.reverse else affine_coupling
        return op(
            x,
            split=self.split,
            order=self.order,
            backend=self.backend,
            scale=self.scale,
            shift_first=self.shift_first,
            params=params,
            layout=self.layout,
            inplace=inplace,
            actnorm=actnorm,
        )

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        inplace: bool = False,
        actnorm: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction x -> y: ``(y [B, C, *S], logdet [B])``; ``inplace`` (no grad only): y is
        x with its transformed channels overwritten; ``actnorm=(log_scale, bias)`` (each ``[C]``): y
        and logdet are those of that ActNorm applied after the coupling, computed in its pass."""
        return self._transform(x, self._params(x, cond), generation=False, inplace=inplace, actnorm=actnorm)

    def inverse(
        self, y: torch.Tensor, cond: torch.Tensor | None = None, inplace: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generation direction y -> x: ``(x [B, C, *S], logdet [B])``; ``inplace`` as for forward."""
        return self._transform(y, self._params(y, cond), generation=True, inplace=inplace)

    def recompute(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> Recomputed:
        """x = inverse(y) and the graph of forward(x) from one evaluation of the net (x_a = y_a)."""
        x_a = y[:, self._cond_idx].detach().requires_grad_()
        params = self._params_from(x_a, cond)
        with torch.no_grad():
            x, _ = self._transform(y, params, generation=True)
        x_b = x[:, self._trans_idx].detach().requires_grad_()

        def join(parts: list[torch.Tensor]) -> torch.Tensor:
            full = parts[0].new_empty(y.shape)
            full[:, self._cond_idx] = parts[0]
            full[:, self._trans_idx] = parts[1]
            return full

        out, logdet = self._transform(join([x_a, x_b]), params, generation=False)
        return Recomputed([x_a, x_b], join, out, logdet)


def image_coupling(
    num_channels: int,
    hidden: int,
    z_dim: int,
    split: str,
    order: str,
    num_transformed: int | None = None,
    transform: str = "affine",
    alpha: float = 1.0,
) -> AffineCoupling:
    """An image coupling with Wolf's conditioning network (z-conditioned when ``z_dim`` > 0)."""
    cb = num_transformed or num_channels // 2
    net = CouplingNet2d(num_channels - cb, cb * (2 if transform == "affine" else 1), hidden, z_dim)
    return AffineCoupling(num_channels, net, split, order, cb, transform, alpha)


def vector_coupling(num_features: int, hidden: int, split: str, order: str, alpha: float = 1.0) -> AffineCoupling:
    """A vector coupling with an MLP conditioner (the z-prior's)."""
    cb = num_features // 2
    net = CouplingNet1d(num_features - cb, 2 * cb, hidden)
    return AffineCoupling(num_features, net, split, order, cb, "affine", alpha)
