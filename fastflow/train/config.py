"""The ``train`` block of a config file: :class:`TrainConfig`, with defaults per data set.

A run's configuration is resolved as: :func:`default_train_config` of the data set, then the ``train``
block of the JSON file, then command-line overrides. Unknown keys are a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fastflow.config import ConfigError, ModelConfig, bundled_config_path, from_dict, load_json, to_dict
from fastflow.data import DATASET_NAMES, DATASETS, DEFAULT_DATASET


@dataclasses.dataclass
class TrainConfig:
    """How to train (paper section 6; the defaults are the paper's CIFAR-10 ones).

    Sizes: ``batch_size`` is the global batch (divided over processes, then into ``batch_steps``
    micro-batches). Budget: ``steps`` optimiser updates, or ``epochs`` passes when ``steps`` is 0.
    Intervals are in steps (0 = only at the end). ``eval_k`` samples of (noise, z) per image in
    validation; ``valid_limit`` > 0 validates on that many images only.
    """

    dataset: str = DEFAULT_DATASET
    data_path: str | None = None
    batch_size: int = 512
    batch_steps: int = 1
    eval_batch_size: int = 256
    init_batch_size: int = 1024
    lr: float = 1e-3
    betas: list = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 50
    lr_decay: float = 0.999997
    weight_decay: float = 1e-6
    grad_clip: float = 0.0
    train_k: int = 1
    eval_k: int = 5
    steps: int = 0
    epochs: int = 0
    valid_interval: int = 1000
    valid_limit: int = 0
    log_interval: int = 10
    checkpoint_interval: int = 1000
    sample_temperatures: list = dataclasses.field(default_factory=lambda: [0.7, 0.8, 0.9, 1.0])
    num_samples: int = 64
    augment: bool = True
    workers: int = 0
    seed: int = 65537

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"train.dataset must be one of {DATASET_NAMES}, got {self.dataset!r}")
        positive = (
            "batch_size",
            "batch_steps",
            "eval_batch_size",
            "init_batch_size",
            "train_k",
            "eval_k",
            "num_samples",
            "log_interval",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "steps",
            "epochs",
            "valid_interval",
            "valid_limit",
            "checkpoint_interval",
            "warmup_steps",
            "workers",
            "grad_clip",
            "weight_decay",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.batch_steps:
            raise ConfigError(
                f"train.batch_size {self.batch_size} must be divisible by train.batch_steps {self.batch_steps}"
            )
        if not self.lr > 0 or not 0 < self.lr_decay <= 1:
            raise ConfigError(f"train.lr must be > 0 and train.lr_decay in (0, 1], got {self.lr}, {self.lr_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        if any(t < 0 for t in self.sample_temperatures):
            raise ConfigError(f"train.sample_temperatures must be >= 0, got {self.sample_temperatures}")


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
    dataset = merged.pop("dataset", DEFAULT_DATASET)
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
