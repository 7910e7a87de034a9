"""Invertible 1x1 convolution (images), invertible linear map (vectors), and ActNorm + 1x1 fused.

Density direction: y = W x per pixel, logdet = (pixels) * log|det W|.  Inverse: x = W^-1 y.
W is a dense ``[C, C]`` parameter with an orthogonal init (:class:`InvertibleMatrix`), or Glow's LU
parameterisation ``W = P L (U + diag(sign * exp(log_s)))`` whose log|det W| = sum(log_s) is analytic
(:class:`LUConv1x1`). Both offer ``matrix()`` and ``statistics()``, which :class:`ActNormConv1x1`
feeds to the fused op. There is no cached inverse: W^-1 and
log|det W| are computed from the current weight each call, or taken from a :func:`weight_statistics`
block that computes those of every layer of a model in one batched call per weight size and checks
each weight's version counter before use, so an optimiser step can never leave them stale.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fastflow.flows.actnorm import ActNorm
from fastflow.flows.base import Flow, logdet_dtype
from fastflow.functional import (
    actnorm_conv1x1,
    actnorm_conv1x1_inverse,
    batched_inverse,
    batched_slogdet,
    batched_slogdet_inverse,
)


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off: the flow's main path (1x1 convs, actnorms, couplings' x) stays in the input's
    precision under mixed precision; only the conditioning networks run in low precision."""
    return torch.autocast(device_type=x.device.type, enabled=False)


@dataclass
class WeightStatistics:
    """log|det W| (0-d) and, when asked for, W^-1 ``[C, C]``, valid for one weight version (None:
    computed while torch.compile traces, where the counter is data-dependent and a traced loss does
    not modify weights in place)."""

    version: int | None

    log_abs_det: torch.Tensor
    inverse: torch.Tensor | None


def _version(weight: torch.Tensor) -> int | None:
    return None if torch.compiler.is_compiling() else weight._version


class InvertibleMatrix(Flow):
    """``y = W x`` over the channel dimension of ``[B, C, *S]``; a 1x1 conv for images. ``ndim``, when
    set, is the only input rank accepted (:class:`InvertibleConv1x1`, :class:`InvertibleLinear`)."""

    ndim: int | None = None

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(num_channels, num_channels))[0])
        self._statistics: WeightStatistics | None = None
        self.backend = "auto"

    def _check(self, x: torch.Tensor) -> None:
        rank_ok = x.dim() == self.ndim if self.ndim is not None else x.dim() >= 2
        if not rank_ok or x.shape[1] != self.num_channels:
            shape = {None: ", ...", 2: "", 4: ", H, W"}[self.ndim]
            raise ValueError(f"{type(self).__name__} expects [B, {self.num_channels}{shape}], got {tuple(x.shape)}")

    def matrix(self) -> torch.Tensor:
        """W ``[C, C]``."""
        return self.weight

    def statistics(self, need_inverse: bool) -> WeightStatistics:
        """log|det W| and maybe W^-1 of the current weight (from the batched block if it is fresh)."""
        stats = self._statistics
        # a compiled region takes the block's statistics as they are: the counter is data-dependent
        # there, and nothing between the block and the region modifies the weight in place
        fresh = stats is not None and (
            torch.compiler.is_compiling() or stats.version is None or stats.version == self.weight._version
        )
        if fresh and (stats.inverse is not None or not need_inverse):
            return stats
        if self.backend == "reference":  # as the paper's code: torch.linalg per layer, per call
            inverse = torch.linalg.inv(self.weight) if need_inverse else None
            return WeightStatistics(self.weight._version, torch.linalg.slogdet(self.weight)[1], inverse)
        w = self.weight.unsqueeze(0)
        if need_inverse:  # one factorisation for both
            _, log_abs_det, inverse = batched_slogdet_inverse(w)
            return WeightStatistics(_version(self.weight), log_abs_det[0], inverse[0])
        return WeightStatistics(_version(self.weight), batched_slogdet(w)[1][0], None)

    def _apply_matrix(self, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):
            m = m.to(x.dtype)
            if x.dim() == 2:
                return x @ m.t()
            if self.backend == "reference":
                return torch.nn.functional.conv2d(x, m.view(*m.shape, 1, 1))
            return torch.matmul(m, x.flatten(2)).view_as(x)

    def _logdet(self, x: torch.Tensor, log_abs_det: torch.Tensor) -> torch.Tensor:
        return (x[0, 0].numel() * log_abs_det.to(logdet_dtype(x))).expand(x.shape[0])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        stats = self.statistics(need_inverse=False)
        return self._apply_matrix(self.weight, x), self._logdet(x, stats.log_abs_det)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(y)
        stats = self.statistics(need_inverse=True)
        return self._apply_matrix(stats.inverse, y), -self._logdet(y, stats.log_abs_det)


class InvertibleConv1x1(InvertibleMatrix):
    """Invertible 1x1 convolution: accepts images ``[B, C, H, W]`` only."""

    ndim = 4


class InvertibleLinear(InvertibleMatrix):
    """Invertible linear map: accepts vectors ``[B, C]`` only."""

    ndim = 2


class LUConv1x1(Flow):
    """Invertible 1x1 conv with W = P L (U + diag(sign * exp(log_s))): log|det W| = sum(log_s).

    Glow's LU parameterisation (as rosinality/glow-pytorch writes it): P fixed, L unit lower
    triangular, U strictly upper triangular, the diagonal's log-magnitude ``log_s`` learned.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        q = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.num_channels = channels
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.backend = "auto"

    def matrix(self) -> torch.Tensor:
        """W = P L U ``[C, C]`` from the current parameters."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.t() + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def statistics(self, need_inverse: bool) -> WeightStatistics:
        """log|det W| = sum(log_s) (no factorisation) and, if asked for, W^-1 (``torch.linalg.inv``
        with the reference backend, as the paper's code computes it)."""
        inverse = None
        if need_inverse:
            w = self.matrix()
            inverse = torch.linalg.inv(w) if self.backend == "reference" else batched_inverse(w.unsqueeze(0))[0]
        return WeightStatistics(self.log_s._version, self.log_s.sum(), inverse)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"LUConv1x1 expects [B, {self.num_channels}, H, W], got {tuple(x.shape)}")

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return (x.shape[2] * x.shape[3] * self.log_s.to(logdet_dtype(x)).sum()).expand(x.shape[0])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        with full_precision(x):
            w = self.matrix().to(x.dtype)
            return torch.matmul(w, x.flatten(2)).view_as(x), self._logdet(x)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(y)
        with full_precision(y):
            w_inv = torch.linalg.inv(self.matrix().double()).to(y.dtype)
            return torch.matmul(w_inv, y.flatten(2)).view_as(y), -self._logdet(y)


class ActNormConv1x1(Flow):
    """ActNorm followed by an invertible 1x1 convolution, run as one fused op; ``[B, C, H, W]``.

    Density direction: y = W (exp(log_scale) * x + bias), logdet = H W (sum(log_scale) + log|det W|);
    ``inverse`` is the generation direction. W is dense (:class:`InvertibleConv1x1`) or, with
    ``lu=True``, LU-parameterised (:class:`LUConv1x1`, analytic log|det W|). Parameters live in
    ``actnorm`` and ``conv`` so that the state dict reads like the unfused pair; ``initialize`` is
    the actnorm's data-dependent init (zero mean, unit std per channel on the init batch).
    """

    def __init__(self, num_channels: int, lu: bool = False) -> None:
        super().__init__()
        self.actnorm = ActNorm(num_channels)
        self.conv = LUConv1x1(num_channels) if lu else InvertibleConv1x1(num_channels)
        self.backend = "auto"

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_scale [C], bias [C])`` of the actnorm part, as the fused op takes them."""
        return self.actnorm.log_scale, self.actnorm.bias

    def matrix(self) -> torch.Tensor:
        """W ``[C, C]``."""
        return self.conv.matrix()

    def statistics(self, need_inverse: bool) -> WeightStatistics:
        """log|det W| and, if asked for, W^-1."""
        return self.conv.statistics(need_inverse)

    def _check(self, x: torch.Tensor) -> None:
        self.conv._check(x)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        with full_precision(x):  # an LU weight is assembled with matmuls: never in low precision
            stats = self.statistics(need_inverse=False)
            return actnorm_conv1x1(
                x, *self.affine(), self.matrix(), log_abs_det=stats.log_abs_det, backend=self.backend
            )

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(y)
        with full_precision(y):
            stats = self.statistics(need_inverse=True)
            return actnorm_conv1x1_inverse(
                y,
                *self.affine(),
                self.matrix(),
                weight_inverse=stats.inverse,
                log_abs_det=stats.log_abs_det,
                backend=self.backend,
            )

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self.actnorm.initialize(x)
        return self.forward(x)


@contextlib.contextmanager
def weight_statistics(module: nn.Module, need_inverse: bool = False) -> Iterator[None]:
    """Within the block, every :class:`InvertibleMatrix` of ``module`` uses log|det W| (and W^-1
    if ``need_inverse``) computed in one batched call per (size, dtype, device) group.

    The results stay in the autograd graph, so gradients reach every weight; they are dropped on
    exit, and a layer whose weight changed inside the block (version counter) recomputes its own.
    """
    groups: dict[tuple, list[InvertibleMatrix]] = defaultdict(list)
    for m in module.modules():
        if isinstance(m, InvertibleMatrix) and m.backend != "reference":
            w = m.weight
            groups[(w.shape[0], w.dtype, w.device)].append(m)
    try:
        for layers in groups.values():
            stacked = torch.stack([m.weight for m in layers])
            if need_inverse:  # one factorisation for both
                _, log_abs_det, inverse = batched_slogdet_inverse(stacked)
            else:
                log_abs_det, inverse = batched_slogdet(stacked)[1], None
            for i, m in enumerate(layers):
                inv = inverse[i] if inverse is not None else None
                m._statistics = WeightStatistics(_version(m.weight), log_abs_det[i], inv)
        yield
    finally:
        for layers in groups.values():
            for m in layers:
                m._statistics = None
