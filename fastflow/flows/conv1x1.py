"""Invertible 1x1 convolution (images), invertible linear map (vectors), and ActNorm + 1x1 fused.

Density direction: y = W x per pixel, logdet = (pixels) * log|det W|.  Inverse: x = W^-1 y.
W is a dense ``[C, C]`` parameter with an orthogonal init. There is no cached inverse: W^-1 and
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
    batched_slogdet,
    batched_slogdet_inverse,
)


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off: the flow's main path (1x1 convs, actnorms, couplings' x) stays in the input's
    precision under mixed precision; only the conditioning networks run in low precision."""
    return torch.autocast(device_type=x.device.type, enabled=False)


@dataclass
class WeightStatistics:
    """log|det W| (0-d) and, when asked for, W^-1 ``[C, C]``, valid for one weight version."""

    version: int
    log_abs_det: torch.Tensor
    inverse: torch.Tensor | None


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

    def statistics(self, need_inverse: bool) -> WeightStatistics:
        """log|det W| and maybe W^-1 of the current weight (from the batched block if it is fresh)."""
        stats = self._statistics
        fresh = stats is not None and stats.version == self.weight._version
        if fresh and (stats.inverse is not None or not need_inverse):
            return stats
        if self.backend == "reference":  # as the paper's code: torch.linalg per layer, per call
            inverse = torch.linalg.inv(self.weight) if need_inverse else None
            return WeightStatistics(self.weight._version, torch.linalg.slogdet(self.weight)[1], inverse)
        w = self.weight.unsqueeze(0)
        if need_inverse:  # one factorisation for both
            _, log_abs_det, inverse = batched_slogdet_inverse(w)
            return WeightStatistics(self.weight._version, log_abs_det[0], inverse[0])
        return WeightStatistics(self.weight._version, batched_slogdet(w)[1][0], None)

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


class ActNormConv1x1(Flow):
    """ActNorm followed by an invertible 1x1 convolution, run as one fused op.

    Density direction: y = W (exp(log_scale) * x + bias); parameters live in ``actnorm`` and
    ``conv`` so that the state dict reads like the unfused pair.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(num_channels)
        self.conv = InvertibleConv1x1(num_channels)
        self.backend = "auto"

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self.conv._check(x)
        stats = self.conv.statistics(need_inverse=False)
        with full_precision(x):
            return actnorm_conv1x1(
                x,
                self.actnorm.log_scale,
                self.actnorm.bias,
                self.conv.weight,
                log_abs_det=stats.log_abs_det,
                backend=self.backend,
            )

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self.conv._check(y)
        stats = self.conv.statistics(need_inverse=True)
        with full_precision(y):
            return actnorm_conv1x1_inverse(
                y,
                self.actnorm.log_scale,
                self.actnorm.bias,
                self.conv.weight,
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
                m._statistics = WeightStatistics(m.weight._version, log_abs_det[i], inv)
        yield
    finally:
        for layers in groups.values():
            for m in layers:
                m._statistics = None
