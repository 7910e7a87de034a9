"""Stock Glow, the baseline: plain PyTorch ops, no global code."""

from __future__ import annotations

from fastflow.config import ModelConfig
from fastflow.flows import build_glow
from fastflow.models.base import ImageFlowModel


class GlowModel(ImageFlowModel):
    """Glow (levels x steps, learned split priors) over ``[B, C, H, W]`` images."""

    kind = "glow"

    def __init__(self, config: ModelConfig) -> None:
        f = config.flow
        super().__init__(config, build_glow(config.in_channels, f.levels, f.num_steps, f.hidden_channels, f.lu))
