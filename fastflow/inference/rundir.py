"""Loading a trained model from a run folder alone: ``config.json`` beside ``checkpoint.pt`` / ``best.pt``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from fastflow.config import ConfigError, ModelConfig
from fastflow.errors import UsageError
from fastflow.models import build_model
from fastflow.runfiles import RunFiles
from fastflow.train.checkpoint import load_checkpoint, load_model_state
from fastflow.train.config import TrainConfig, load_run_config
from fastflow.train.distributed import pick_device

CHECKPOINTS = ("checkpoint", "best")


@dataclasses.dataclass
class LoadedRun:
    """A model in eval mode with its configs and the step its checkpoint was written at."""

    model: torch.nn.Module
    model_config: ModelConfig
    train_config: TrainConfig
    step: int
    files: RunFiles
    checkpoint: Path


def load_run(run_dir: str | Path, which: str = "checkpoint", device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of ``run_dir`` from its ``config.json`` and load ``<which>.pt`` into it.

    Raises ConfigError / CheckpointError naming the file when either is missing, corrupt, or they
    do not belong together (e.g. a checkpoint of another model kind).
    """
    if which not in CHECKPOINTS:
        raise UsageError(f"checkpoint must be one of {CHECKPOINTS}, got {which!r}")
    device = pick_device(str(device))
    files = RunFiles(Path(run_dir))
    if not files.root.is_dir():
        raise ConfigError(f"run folder {files.root} does not exist")
    if not files.config.is_file():
        raise ConfigError(f"{files.root} has no config.json; is it a folder written by `fastflow train`?")
    model_config, train_config = load_run_config(files.config)
    path = files.checkpoint if which == "checkpoint" else files.best
    state = load_checkpoint(path, map_location=device)
    model = build_model(model_config).to(device)
    load_model_state(model, state, path)
    model.eval()
    return LoadedRun(model, model_config, train_config, state["step"], files, path)
