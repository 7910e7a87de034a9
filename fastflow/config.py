"""Configuration objects, loaded strictly from JSON.

A config file holds ``{"model": {...}, "train": {...}}``; ``model`` is a :class:`ModelConfig`, and
``train`` is :class:`fastflow.train.config.TrainConfig`. Unknown keys are an error that names the key,
where it was found and the keys that are allowed.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# The model kinds, from the baseline to the full model; fastflow.models.MODELS maps each to its class.
MODEL_KINDS = ("glow", "refined_glow", "wolf")


class ConfigError(ValueError):
    """A configuration file or dict that does not match the expected schema."""


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build the dataclass ``cls`` from ``data``, recursing into nested dataclasses.

    Raises :class:`ConfigError` for unknown or missing keys, naming them and ``where`` they are.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{where}: {err}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _convert(args[0], value, where)
        return value
    if origin in (list, tuple) and isinstance(value, list):
        return value if origin is list else tuple(value)
    return value


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

    levels: int
    num_steps: list
    hidden_channels: list
    factors: list = dataclasses.field(default_factory=list)
    alpha: float = 1.0
    transform: str = "affine"  # "affine" or "additive"
    lu: bool = True  # glow only: LU-parameterised 1x1 convolution


@dataclasses.dataclass
class EncoderConfig:
    """ResNet compression encoder: ``levels`` stages down to 4x4, then a 1x1 conv to ``out_planes``."""

    levels: int
    hidden_planes: list
    out_planes: int


@dataclasses.dataclass
class PriorConfig:
    """Flow prior over z: ``num_steps`` steps with MLP couplings of ``hidden_features``."""

    num_steps: int = 2
    hidden_features: int = 256
    alpha: float = 1.0


@dataclasses.dataclass
class ModelConfig:
    """One model: ``kind`` is one of :data:`MODEL_KINDS` ("glow", "refined_glow", "wolf")."""

    kind: str
    image_size: int
    flow: FlowConfig
    in_channels: int = 3
    n_bits: int = 8
    z_dim: int = 0
    encoder: EncoderConfig | None = None
    prior: PriorConfig | None = None
    memory_efficient: bool = False  # recompute flow activations from outputs in the backward pass

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if not 1 <= self.n_bits <= 8:
            raise ConfigError(f"model.n_bits must be between 1 and 8, got {self.n_bits}")
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
