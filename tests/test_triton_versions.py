"""Every Triton kernel compiles for sm_80 and sm_90 under Triton 3.6, the oldest Triton that fastflow
supports (what torch 2.11 brings; the GPU machine of this project has it), as well as under the
Triton of the dev venv (the ``test_kernels_compile_for_a_gpu`` tests themselves).

Slow: it installs ``triton==3.6.0`` with pip into a folder of its own (``--target``, no dependencies;
cached under ``~/.cache/fastflow``) and re-runs the compile tests with that folder first on the
compiling subprocess's path (``FASTFLOW_TRITON_PATH``, see kernel_checks.py). Skipped when pip
cannot fetch the wheel (no network).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

OLDEST_TRITON = "3.6.0"
TESTS = Path(__file__).parent
COMPILE_TESTS = [  # every test module with a compile check (this one names it too, so it is left out)
    str(p)
    for p in sorted(TESTS.glob("test_*.py"))
    if p.name != Path(__file__).name and "def test_kernels_compile_for_a_gpu" in p.read_text()
]


def _install_triton(version: str) -> Path:
    target = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastflow" / f"triton-{version}"
    if (target / "triton" / "__init__.py").is_file():
        return target
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), f"triton=={version}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"pip could not install triton=={version}: {done.stderr.strip().splitlines()[-1:]}")
    return target


@pytest.mark.slow
def test_kernels_compile_under_the_oldest_supported_triton():
    target = _install_triton(OLDEST_TRITON)
    env = dict(os.environ, FASTFLOW_TRITON_PATH=str(target))
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-k", "compile_for_a_gpu"]
    done = subprocess.run(command + COMPILE_TESTS, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:]
    versions = {line.split()[1] for line in done.stdout.splitlines() if line.lstrip(".").startswith("triton ")}
    assert versions == {OLDEST_TRITON}, done.stdout[-2000:]
    assert f"{len(COMPILE_TESTS)} passed" in done.stdout
