"""Fused drop-ins for normflows (PyPI ``normflows``) Glow models: ``fuse(model)``.

Directions. normflows writes every flow in the generation direction: ``Flow.forward(z)`` maps latent
to data and ``Flow.inverse(x)`` maps data to latent (what ``MultiscaleFlow.log_prob`` runs).
fastflow's ``forward`` is the density direction (data to latent). The fused block keeps normflows'
convention, so :class:`FusedGlowBlock` ``.forward`` = normflows ``forward`` = fastflow ``inverse``
(generation), and ``.inverse`` = normflows ``inverse`` = fastflow ``forward`` (density).

What is fused, per ``normflows.flows.GlowBlock`` (coupling, then Invertible1x1Conv, then ActNorm in
normflows' generation order):

- ActNorm + Invertible1x1Conv (dense or ``use_lu``) become one :class:`NormflowsActNormConv1x1`, a
  fastflow :class:`~fastflow.flows.ActNormConv1x1`. normflows' density direction is
  ``y = W ((x - t) exp(-s))``; with ``log_scale = -s`` and ``bias = -t exp(-s)`` that is fastflow's
  ``y = W (exp(log_scale) x + bias)``, one fused op (analytic log|det W| = sum(log_S) for LU).
- The AffineCouplingBlock with ``split_mode`` "channel" or "channel_inv" becomes a fastflow
  :class:`~fastflow.flows.AffineCoupling` with ``reverse=True`` (its forward runs the op's
  generation direction, :mod:`fastflow.ops.affine_coupling`) and ``layout="interleaved"`` (shift =
  even, scale = odd outputs of ``param_map``): scale_map "exp" is ``s = exp(u)``, "sigmoid" is
  ``s = 1 / sigmoid(u + 2)``, "sigmoid_inv" is ``s = sigmoid(u + 2)``, and ``scale=False`` is the
  additive coupling.
  Checkerboard splits stay as they were; so does a block without a 1x1 conv (one channel).

The fused modules hold normflows' own parameter objects (the same ``nn.Parameter``\\s), and the
block's state dict uses normflows' keys, so checkpoints move freely between fused and unfused
models. ActNorm's data-dependent init (on the first batch) runs through normflows' own code.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from fastflow.flows.base import Flow
from fastflow.flows.conv1x1 import ActNormConv1x1, WeightStatistics
from fastflow.flows.coupling import AffineCoupling
from fastflow.functional import batched_slogdet
from fastflow.ops.affine_coupling import CouplingScale

try:
    import normflows as nf
except ImportError as exc:  # pragma: no cover - the optional extra is missing
    raise ImportError("fastflow.integrations.normflows needs normflows: pip install 'fastflow[normflows]'") from exc

log = logging.getLogger(__name__)

SCALE_MAPS = {
    "exp": CouplingScale("exp"),
    "sigmoid": CouplingScale("sigmoid", offset=2.0, reciprocal=True),
    "sigmoid_inv": CouplingScale("sigmoid", offset=2.0),
}
SPLIT_MODES = {"channel": "up", "channel_inv": "down"}


class NormflowsActNormConv1x1(ActNormConv1x1):
    """normflows' ActNorm and Invertible1x1Conv as one fused fastflow op (fastflow directions).

    ``actnorm.s``, ``actnorm.t`` ``[1, C, 1, 1]``; the conv's ``W`` or ``P, L, U, sign_S, log_S``.
    """

    def __init__(self, actnorm: nf.flows.ActNorm, conv: nf.flows.Invertible1x1Conv) -> None:
        Flow.__init__(self)
        self.actnorm = actnorm
        self.conv = conv
        self.backend = "auto"

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.actnorm.s.reshape(-1), self.actnorm.t.reshape(-1)
        return -s, -t * torch.exp(-s)

    def matrix(self) -> torch.Tensor:
        c = self.conv
        if not c.use_lu:
            return c.W
        lower = torch.tril(c.L, diagonal=-1) + c.eye
        upper = torch.triu(c.U, diagonal=1) + torch.diag(c.sign_S * torch.exp(c.log_S))
        return c.P @ lower @ upper

    def statistics(self, need_inverse: bool) -> WeightStatistics:
        w = self.matrix()
        log_abs_det = self.conv.log_S.sum() if self.conv.use_lu else batched_slogdet(w.unsqueeze(0))[1][0]
        inverse = torch.linalg.inv(w.double()).to(w.dtype) if need_inverse else None
        return WeightStatistics(0, log_abs_det, inverse)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.conv.num_channels:
            raise ValueError(f"expected [B, {self.conv.num_channels}, H, W], got {tuple(x.shape)}")

    def _initialized(self) -> bool:
        return bool(self.actnorm.data_dep_init_done > 0)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._initialized():  # normflows' own first-batch init, in its own order
            h, ld_a = self.actnorm.inverse(x)
            y, ld_c = self.conv.inverse(h)
            return y, (ld_a + ld_c).expand(x.shape[0])
        return super().forward(x, cond)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._initialized():
            h, ld_c = self.conv(y)
            x, ld_a = self.actnorm(h)
            return x, (ld_a + ld_c).expand(y.shape[0])
        return super().inverse(y, cond)


class FusedGlowBlock(nf.flows.Flow):
    """A normflows GlowBlock on fastflow's fused ops, in normflows' directions (module docstring).

    ``coupling`` is a fastflow AffineCoupling (or the original AffineCouplingBlock if it cannot be
    fused) and ``actnorm_conv`` a :class:`NormflowsActNormConv1x1`. ``replaced`` lists what was fused.
    """

    def __init__(self, block: nf.flows.GlowBlock) -> None:
        super().__init__()
        coupling_block, conv, actnorm = block.flows
        self.replaced = ["ActNorm + Invertible1x1Conv" + (" (LU)" if conv.use_lu else "") + " -> ActNormConv1x1"]
        self.actnorm_conv = NormflowsActNormConv1x1(actnorm, conv)
        key_map = [("actnorm_conv.conv.", "flows.1."), ("actnorm_conv.actnorm.", "flows.2.")]
        fused = fuse_coupling(coupling_block, conv.num_channels)
        if fused is None:
            self.coupling = coupling_block
            key_map.append(("coupling.", "flows.0."))
        else:
            self.coupling = fused
            self.replaced.append(f"AffineCouplingBlock ({describe_coupling(coupling_block)}) -> AffineCoupling")
            key_map.append(("coupling.net.", "flows.0.flows.1.param_map."))
        self._key_map = key_map
        self.register_state_dict_post_hook(_rename_keys(key_map, to_normflows=True))
        self.register_load_state_dict_pre_hook(_rename_keys(key_map, to_normflows=False))

    def _coupling(self, z: torch.Tensor, generation: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.coupling, AffineCoupling):
            return self.coupling.inverse(z) if generation else self.coupling(z)
        return self.coupling(z) if generation else self.coupling.inverse(z)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generation direction (normflows' forward): coupling, then 1x1 conv and actnorm."""
        z, ld_coupling = self._coupling(z, generation=True)
        x, ld = self.actnorm_conv.inverse(z)
        return x, (ld + ld_coupling).to(x.dtype)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density direction (normflows' inverse): actnorm and 1x1 conv, then the coupling."""
        z, ld = self.actnorm_conv(x)
        z, ld_coupling = self._coupling(z, generation=False)
        return z, (ld + ld_coupling).to(z.dtype)


def describe_coupling(block: nn.Module) -> str:
    coupling = block.flows[1]
    return f"scale_map={coupling.scale_map!r}" if coupling.scale else "additive"


def fuse_coupling(block: nn.Module, channels: int) -> AffineCoupling | None:
    """A fastflow AffineCoupling holding ``block``'s param_map, or None if the block cannot be fused."""
    split, coupling = block.flows[0], block.flows[1]
    order = SPLIT_MODES.get(split.mode)
    if order is None or channels < 2 or (coupling.scale and coupling.scale_map not in SCALE_MAPS):
        return None
    transformed = channels // 2 if order == "up" else (channels + 1) // 2
    scale = SCALE_MAPS[coupling.scale_map] if coupling.scale else CouplingScale("additive")
    return AffineCoupling(
        channels, coupling.param_map, "continuous", order, transformed, scale=scale, layout="interleaved", reverse=True
    )


def _rename_keys(key_map: list[tuple[str, str]], to_normflows: bool):
    """A state-dict hook renaming this block's keys between fused and normflows names."""
    pairs = [(f, o) if to_normflows else (o, f) for f, o in key_map]

    def rename(state_dict: dict, prefix: str) -> None:
        for key in list(state_dict):
            for src, dst in pairs:
                if key.startswith(prefix + src):
                    state_dict[prefix + dst + key[len(prefix + src) :]] = state_dict.pop(key)
                    break

    if to_normflows:
        return lambda module, state_dict, prefix, local_metadata: rename(state_dict, prefix)
    return lambda module, state_dict, prefix, *args: rename(state_dict, prefix)


def fuse(model: nn.Module) -> nn.Module:
    """Replace every fusable ``normflows.flows.GlowBlock`` of ``model`` (in place) with a
    :class:`FusedGlowBlock` holding the same parameters; returns the model.

    Everything else stays as it was. What was replaced is logged (INFO) and listed by
    :func:`fusion_report`.
    """
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nf.flows.GlowBlock) and len(child.flows) == 3:
                setattr(parent, child_name, FusedGlowBlock(child))
    for line in fusion_report(model):
        log.info("fastflow fuse: %s", line)
    return model


def fusion_report(model: nn.Module) -> list[str]:
    """One line per GlowBlock of ``model``: what runs fused, and what was kept as normflows wrote it."""
    lines = []
    for name, m in model.named_modules():
        if isinstance(m, FusedGlowBlock):
            lines.append(f"{name}: " + "; ".join(m.replaced))
        elif isinstance(m, nf.flows.GlowBlock):
            lines.append(f"{name}: kept (GlowBlock without a 1x1 conv)")
    return lines
