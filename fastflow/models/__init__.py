"""The three models, built from a :class:`fastflow.config.ModelConfig`."""

from __future__ import annotations

from pathlib import Path

from fastflow.config import ConfigError, ModelConfig, load_model_config
from fastflow.models.base import ImageFlowModel
from fastflow.models.glow import GlowModel
from fastflow.models.wolf import RefinedGlowModel, WolfModel

MODELS = {cls.kind: cls for cls in (GlowModel, RefinedGlowModel, WolfModel)}  # one per fastflow.config.MODEL_KINDS


def _check_sizes(config: ModelConfig) -> None:
    squeezes = config.flow.levels - (0 if config.kind == "glow" else 1)
    if config.image_size % 2**squeezes:
        raise ConfigError(
            f"image_size {config.image_size} must be divisible by 2**{squeezes} = {2**squeezes} "
            f"for a {config.flow.levels}-level {config.kind} flow"
        )


def build_model(config: ModelConfig | dict | str | Path) -> ImageFlowModel:
    """A model from a config object, a dict, a JSON path or a bundled config name (``"tiny_wolf"``)."""
    if not isinstance(config, ModelConfig):
        config = load_model_config(config)
    _check_sizes(config)
    return MODELS[config.kind](config)


__all__ = ["GlowModel", "ImageFlowModel", "RefinedGlowModel", "WolfModel", "build_model", "MODELS"]
