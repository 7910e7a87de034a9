"""The ``train`` block of a config file: :class:`TrainConfig`, with defaults per data set.

A run's configuration is resolved as: :func:`default_train_config` of the data set, then the ``train``
block of the JSON file, then command-line overrides. Unknown keys, and values of the wrong type or out of
range (each field's type hint and :func:`~fastflow.schema.setting`), are a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from fastflow.config import ConfigError, ModelConfig, bundled_config_path, load_json, to_dict
from fastflow.data import DATASET_NAMES, DATASETS, DEFAULT_DATASET
from fastflow.schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, check, from_dict, setting, validate_fields


@dataclasses.dataclass
class TrainConfig:
    """How to train (paper section 6; the defaults are the paper's CIFAR-10 ones).

    Sizes: ``batch_size`` is the global batch (divided over processes, then into ``batch_steps``
    micro-batches). Budget: ``steps`` optimiser updates, or ``epochs`` passes when ``steps`` is 0.
    Intervals are in steps (0 = only at the end). ``eval_k`` samples of (noise, z) per image in
    validation; ``valid_limit`` > 0 validates on that many images only. ``compile`` compiles the
    model's repeated blocks for training (``torch.compile`` mode; :mod:`fastflow.train.compile`).
    """

    dataset: str = DEFAULT_DATASET
    data_path: str | None = None
    batch_size: int = setting(512, allowed=AT_LEAST_ONE)
    batch_steps: int = setting(1, allowed=AT_LEAST_ONE)
    eval_batch_size: int = setting(256, allowed=AT_LEAST_ONE)
    init_batch_size: int = setting(1024, allowed=AT_LEAST_ONE)
    lr: float = setting(1e-3, allowed=POSITIVE)
    betas: list[float] = setting(factory=lambda: [0.9, 0.999], allowed=Range(0, 1, high_open=True))
    eps: float = setting(1e-8, allowed=POSITIVE)
    warmup_steps: int = setting(50, allowed=NON_NEGATIVE)
    lr_decay: float = setting(0.999997, allowed=Range(0, 1, low_open=True))
    weight_decay: float = setting(1e-6, allowed=NON_NEGATIVE)
    grad_clip: float = setting(0.0, allowed=NON_NEGATIVE)
    train_k: int = setting(1, allowed=AT_LEAST_ONE)
    eval_k: int = setting(5, allowed=AT_LEAST_ONE)
    steps: int = setting(0, allowed=NON_NEGATIVE)
    epochs: int = setting(0, allowed=NON_NEGATIVE)
    valid_interval: int = setting(1000, allowed=NON_NEGATIVE)
    valid_limit: int = setting(0, allowed=NON_NEGATIVE)
    log_interval: int = setting(10, allowed=AT_LEAST_ONE)
    checkpoint_interval: int = setting(1000, allowed=NON_NEGATIVE)
    sample_temperatures: list[float] = setting(factory=lambda: [0.7, 0.8, 0.9, 1.0], allowed=NON_NEGATIVE)
    num_samples: int = setting(64, allowed=AT_LEAST_ONE)
    augment: bool = True
    workers: int = setting(0, allowed=NON_NEGATIVE)
    seed: int = setting(65537, allowed=NON_NEGATIVE)
    compile: Literal["off", "default", "max-autotune"] = "off"

    def __post_init__(self) -> None:
        validate_fields(self, "train")
        if self.dataset not in DATASETS:
            raise ConfigError(f"train.dataset must be one of {DATASET_NAMES}, got {self.dataset!r}")
        if self.batch_size % self.batch_steps:
            raise ConfigError(
                f"train.batch_size {self.batch_size} must be divisible by train.batch_steps {self.batch_steps}"
            )
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {self.betas}")


def default_train_config(dataset: str, **overrides: Any) -> TrainConfig:
    """The training defaults of ``dataset`` (its spec's ``train_defaults``), with ``overrides``."""
    if dataset not in DATASETS:
        raise ConfigError(f"train.dataset must be one of {DATASET_NAMES}, got {dataset!r}")
    return from_dict(TrainConfig, {"dataset": dataset, **DATASETS[dataset].train_defaults, **overrides}, "train")


def train_config_from(block: dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Resolve a ``train`` block: data-set defaults, then ``block``, then ``overrides`` (all strict)."""
    if not isinstance(block or {}, dict):
        raise ConfigError(f"train must be a JSON object, got {type(block).__name__}")
    merged = {**(block or {}), **(overrides or {})}
    dataset = check("train.dataset", merged.pop("dataset", DEFAULT_DATASET), str, error=ConfigError)
    return default_train_config(dataset, **merged)


def load_run_config(source: str | Path, overrides: dict[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """(model, train) configs from a JSON path or a bundled name (``"tiny_wolf"``), plus train overrides."""
    path = Path(source)
    if not path.suffix:
        path = bundled_config_path(str(source))
    data = load_json(path)
    if not isinstance(data, dict) or "model" not in data:
        raise ConfigError(f'config file {path} must hold {{"model": {{...}}, "train": {{...}}}}')
    unknown = sorted(set(data) - {"model", "train"})
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {path}; allowed keys: ['model', 'train']")
    return from_dict(ModelConfig, data["model"], "model"), train_config_from(data.get("train"), overrides)


def run_config_dict(model: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """The ``{"model": ..., "train": ...}`` dict written to a run's ``config.json``."""
    return {"model": to_dict(model), "train": to_dict(train)}
