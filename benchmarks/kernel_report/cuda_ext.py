"""Resource usage of the CUDA extension's kernels (``csrc/cuda/*.cu``) from ``nvcc -Xptxas -v``."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def ptxas_usage(source: Path, capability: int) -> list[dict]:
    """``[{kernel, regs, spill_bytes, smem_bytes}]`` of each kernel in ``source`` for ``sm_<capability>``."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [nvcc, "-std=c++17", f"-arch=sm_{capability}", "-Xptxas", "-v", "-c", str(source), "-o", f"{tmp}/k.o"],
            capture_output=True,
            text=True,
            check=True,
        )
    rows, current = [], None
    for line in done.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            current = {"kernel": m.group(1)}
        elif current is not None and (m := re.search(r"(\d+) bytes spill stores", line)):
            current["spill_bytes"] = int(m.group(1))
        elif current is not None and (m := re.search(r"Used (\d+) registers.*?(\d+) bytes smem", line)):
            current.update(regs=int(m.group(1)), smem_bytes=int(m.group(2)))
            rows.append(current)
            current = None
    return rows


def _short(mangled: str) -> str:
    m = re.search(r"\d([a-z_]+_kernel)I([a-z])", mangled)
    return f"{m.group(1)}<{'double' if m.group(2) == 'd' else 'float'}>" if m else mangled


def table() -> list[str]:
    lines = ["| source | kernel | arch | regs | spill B | static smem B |", "|---|---|---|--:|--:|--:|"]
    for source in CUDA_SOURCES:
        for capability in (80, 90):
            for row in ptxas_usage(source, capability):
                lines.append(
                    f"| {source.name} | {_short(row['kernel'])} | sm_{capability} | {row['regs']} "
                    f"| {row.get('spill_bytes', 0)} | {row['smem_bytes']} |"
                )
    return lines
