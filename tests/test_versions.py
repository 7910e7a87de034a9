"""The tested ranges (``fastflow/_versions.py``) are the ones the two test environments install, a torch
outside them is named once at import, and a Triton interpreter that cannot read the kernels' scalar
arguments under the installed numpy is refused in one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from fastflow import _versions

ROOT = Path(__file__).resolve().parents[1]


def test_the_running_torch_is_in_the_tested_range():
    assert _versions.untested_torch(torch.__version__) is None


def test_torch_outside_the_range_is_named():
    for version in ("2.11.0+cu130", "2.12.1", "2.14.1"):
        assert _versions.untested_torch(version) is None
    for version in ("2.10.0", "2.15.0+cpu", "3.0.0"):
        assert f"this is torch {version}" in _versions.untested_torch(version)


def test_import_warns_once_for_an_untested_torch():
    code = (
        "import warnings; warnings.simplefilter('always'); import torch; torch.__version__ = '2.15.0'; "
        "import fastflow, fastflow.models, fastflow.functional"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "tested with torch" in line]
    assert len(lines) == 1 and "this is torch 2.15.0" in lines[0], done.stderr


def test_interpreter_conflict():
    assert "numpy < 2.4" in _versions.interpreter_conflict("3.6.0", "2.4.6")
    assert _versions.interpreter_conflict("3.6.0", "2.2.6") is None
    assert _versions.interpreter_conflict("3.8.0", "2.4.6") is None


def test_the_make_targets_install_both_ends_of_the_ranges():
    makefile = (ROOT / "Makefile").read_text()
    oldest = dict(re.findall(r"(torch|triton|numpy)==(\d+\.\d+)", makefile.split("OLDEST_STACK :=")[1].splitlines()[0]))
    assert oldest == {"torch": _versions.TORCH[0], "triton": _versions.TRITON[0], "numpy": _versions.NUMPY[0]}
    dev = re.search(r"torch==(\d+\.\d+)\.\d+ torchvision", makefile.split("$(STAMP):")[1]).group(1)
    assert dev == _versions.TORCH[1]
