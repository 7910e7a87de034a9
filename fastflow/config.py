"""Configuration objects, loaded strictly from JSON.

A config file holds ``{"model": {...}, "train": {...}}``; ``model`` is a :class:`ModelConfig`, and
``train`` is :class:`fastflow.train.config.TrainConfig`. Unknown keys are an error that names the key,
where it was found and the keys that are allowed; every value is checked against its field's type and
allowed range (:mod:`fastflow.schema`), with an error naming the key, the value and what is expected.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fastflow.errors import ConfigError
from fastflow.schema import AT_LEAST_ONE, NON_NEGATIVE, UNIT_INTERVAL, Range, from_dict, setting, validate_fields

# The model kinds, from the baseline to the full model; fastflow.models.MODELS maps each to its class.
MODEL_KINDS = ("glow", "refined_glow", "wolf")


def to_dict(obj: Any) -> dict[str, Any]:
    """The JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(obj)


@dataclasses.dataclass
class FlowConfig:
    """The decoder flow (refined Glow, MaCow-style multi-scale) or the stock Glow flow.

    ``num_steps``: refined: one entry per level, the first and last ints, the internal ones lists of
    ints (one per sub-split); glow: one int per level. ``hidden_channels``: one per level.
    ``factors``: refined only, one per internal level (4 in every paper config).
    """

    levels: int = setting(allowed=AT_LEAST_ONE)
    num_steps: list[int | list[int]] = setting(allowed=AT_LEAST_ONE)
    hidden_channels: list[int] = setting(allowed=AT_LEAST_ONE)
    factors: list[int] = setting(factory=list, allowed=Range(2))
    alpha: float = setting(1.0, allowed=UNIT_INTERVAL)  # keeps Wolf's coupling scale > 0 (ops/affine_coupling.py)
    transform: str = "affine"  # "affine" or "additive"
    lu: bool = True  # glow only: LU-parameterised 1x1 convolution

    def __post_init__(self) -> None:
        from fastflow.flows.coupling import TRANSFORMS

        validate_fields(self, "model.flow")
        if self.transform not in TRANSFORMS:
            raise ConfigError(f"model.flow.transform must be one of {list(TRANSFORMS)}, got {self.transform!r}")


@dataclasses.dataclass
class EncoderConfig:
    """ResNet compression encoder: ``levels`` stages down to 4x4, then a 1x1 conv to ``out_planes``."""

    levels: int = setting(allowed=AT_LEAST_ONE)
    hidden_planes: list[int] = setting(allowed=AT_LEAST_ONE)
    out_planes: int = setting(allowed=AT_LEAST_ONE)

    def __post_init__(self) -> None:
        validate_fields(self, "model.encoder")


@dataclasses.dataclass
class PriorConfig:
    """Flow prior over z: ``num_steps`` steps with MLP couplings of ``hidden_features``."""

    num_steps: int = setting(2, allowed=NON_NEGATIVE)
    hidden_features: int = setting(256, allowed=AT_LEAST_ONE)
    alpha: float = setting(1.0, allowed=UNIT_INTERVAL)

    def __post_init__(self) -> None:
        validate_fields(self, "model.prior")


@dataclasses.dataclass
class ModelConfig:
    """One model: ``kind`` is one of :data:`MODEL_KINDS` ("glow", "refined_glow", "wolf")."""

    kind: str
    image_size: int = setting(allowed=AT_LEAST_ONE)
    flow: FlowConfig = setting()
    in_channels: int = setting(3, allowed=AT_LEAST_ONE)
    n_bits: int = setting(8, allowed=Range(1, 8))
    z_dim: int = setting(0, allowed=NON_NEGATIVE)
    encoder: EncoderConfig | None = None
    prior: PriorConfig | None = None
    memory_efficient: bool = False  # recompute flow activations from outputs in the backward pass

    def __post_init__(self) -> None:
        validate_fields(self, "model")
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.kind == "wolf" and (self.encoder is None or self.prior is None or self.z_dim <= 0):
            raise ConfigError("a wolf model needs 'z_dim' > 0, an 'encoder' block and a 'prior' block")
        if self.kind != "wolf" and (self.encoder is not None or self.z_dim):
            raise ConfigError(f"a {self.kind} model has no z: drop 'z_dim', 'encoder' and 'prior'")


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {path} is not valid JSON: {err}") from None


def load_model_config(source: str | Path | dict[str, Any]) -> ModelConfig:
    """A :class:`ModelConfig` from a dict, a JSON file, or a bundled name like ``"cifar10/wolf"``.

    A file may hold the model block alone or ``{"model": ..., "train": ...}``.
    """
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.suffix:
            path = bundled_config_path(str(source))
        data = load_json(path)
    if "model" in data:
        data = data["model"]
    return from_dict(ModelConfig, data, "model")


def bundled_config_path(name: str) -> Path:
    """The path of a bundled config such as ``"cifar10_wolf"`` or ``"cifar10/wolf"``."""
    import fastflow.configs

    root = Path(fastflow.configs.__file__).parent
    path = root / (name.replace("/", "_") + ".json")
    if not path.is_file():
        names = sorted(p.stem for p in root.glob("*.json"))
        raise ConfigError(f"no bundled config named {name!r}; bundled: {names}")
    return path
