"""The metrics log of a run (one JSON object per line) and its bits/dim plot.

Each record has ``split`` ("train" or "valid"), ``step`` and numbers such as ``bpd``; train records
are means over the last ``log_interval`` steps.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from fastflow.errors import DataError
from fastflow.train.checkpoint import atomic_write


class MetricsLog:
    """Append-only JSON-lines file; :meth:`truncate` drops records after a step (used on resume)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """The records; a torn last line (a kill while appending) is skipped, any other bad line raises."""
        if not self.path.is_file():
            return []
        text = self.path.read_text()
        lines = text.splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if number == len(lines) and not text.endswith("\n"):
                    break  # a run killed while appending leaves its last line cut short (no newline)
                raise DataError(
                    f"{self.path} line {number} is not a JSON record ({err}); only a cut-short last line "
                    f"is tolerated: fix or delete that line"
                ) from None
        return records

    def truncate(self, step: int) -> None:
        """Keep only the records of steps <= ``step`` (those a resumed run does not redo)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def plot_bpd(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Save a PNG of train and validation bits/dim against step (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for split, style in (("train", ".-"), ("valid", "o-")):
        points = [(r["step"], r["bpd"]) for r in records if r.get("split") == split and "bpd" in r]
        if points:
            ax.plot(*zip(*points), style, label=split, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write(path, png.getvalue())
