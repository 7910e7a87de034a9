"""Helpers shared by the benchmarks: the machine, interleaved timing, step memory, result files.

Nothing here estimates a number: every figure comes from a clock, ``/proc/self/status`` or the CUDA
allocator, and a value that cannot be measured is ``None``.
"""

from __future__ import annotations

import csv
import ctypes
import gc
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from ``lscpu`` (``platform.processor()`` if lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_info(device: str) -> dict:
    """Where and when a run happens: CPU, cores, threads, load, GPU, torch version, date."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def synchronizer(device: str) -> Callable[[], None]:
    """What to call before reading a clock so that queued device work is included."""
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def time_interleaved(
    fns: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds of each function over ``repeats`` rounds, one call of each per round, the order
    reversed every other round (A B C, C B A, ...), so that load from other processes, and its drift,
    falls on every function alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for round_ in range(repeats):
        for name, fn in order if round_ % 2 == 0 else reversed(order):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def paired_ratio(reference: list[float], other: list[float]) -> float:
    """Median over rounds of reference time / other time (> 1: ``other`` is faster). Pairing the
    steps of one round cancels the load that changes from round to round."""
    return median(r / o for r, o in zip(reference, other))


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, in bytes."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def _release_free_heap() -> None:
    """Return glibc's free heap pages to the OS, so that reusing them shows up as RSS again."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StepMemory:
    """The rise of memory during a block, in bytes (``self.bytes``; None where not measurable).

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at entry. CPU: the peak resident
    set size (VmHWM, reset at entry through ``/proc/self/clear_refs``) minus the RSS at entry, after
    glibc's free heap pages are handed back (``malloc_trim``) so that reused memory counts again.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.bytes: int | None = None
        self.method = (
            "torch.cuda.max_memory_allocated"
            if device == "cuda"
            else "peak RSS rise (VmHWM after clear_refs, malloc_trim)"
        )
        self._start = 0
        self._ok = True

    def __enter__(self) -> StepMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            _release_free_heap()
            self._ok = os.path.exists("/proc/self/status") and _reset_peak_rss()
            self._start = _proc_status()["VmRSS"] if self._ok else 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self._start
        elif self._ok:
            self.bytes = _proc_status()["VmHWM"] - self._start


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows (dicts, possibly with different keys) as one CSV; columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(str(_csv_value(v)) for v in value)
    return "" if value is None else value


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table of ``rows``; ``columns`` are (title, key, format spec), '-' for None."""
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        cells = []
        for _, key, spec in columns:
            value = row.get(key)
            cells.append("-" if value is None or value == "" else format(value, spec))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_block(path: Path, name: str, text: str, title: str) -> None:
    """Write ``text`` between the ``<!-- name:begin -->`` and ``<!-- name:end -->`` markers of
    ``path``, leaving everything outside them (other engineers' sections) as it is. A file without
    the markers gets the block appended; a missing file is created with ``title``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else f"# {title}\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)
