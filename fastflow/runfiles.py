"""The files of a run folder, written by training and read by every other command."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The files of a run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def plot(self) -> Path:
        return self.root / "bpd.png"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def run_marks(self) -> list[Path]:
        """The files present that show the folder holds a run (config, checkpoints, metrics)."""
        return [p for p in (self.config, self.checkpoint, self.best, self.metrics) if p.exists()]

    def clear(self) -> None:
        """Delete what training writes (checkpoints, config, metrics, plot, ``samples/``); nothing else."""
        for path in (self.config, self.checkpoint, self.best, self.metrics, self.plot):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.samples, ignore_errors=True)
