"""The device command (benchmarks/gpu_check.sh) runs every stage's plumbing on the CPU (``--dry-run``:
tiny shapes, the Triton interpreter, tiny configs) and writes the files a GPU run would, within the
device tool's limits (at most 8 files, flat), so a broken stage shows up here and not on a rare GPU.
The timings of a dry run mean nothing; what is checked is that every stage ran and reported."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_kernels
from benchmarks.device import gpu_check
from benchmarks.device.ops import op_backends

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    results_before = gpu_check.RESULTS.read_text()
    command = [sys.executable, "-m", "benchmarks.device.gpu_check", "--dry-run", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert gpu_check.RESULTS.read_text() == results_before  # a dry run never rewrites RESULTS.md
    return out, done


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_stage_runs_and_the_files_fit_the_device_tool(dry_run):
    out, done = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(gpu_check.FILES) and len(files) <= 8
    assert all(p.is_file() for p in out.iterdir())
    summary = (out / "summary.md").read_text()
    for stage in gpu_check.STAGES:
        assert f"| {stage.name} | ok |" in summary
    assert "DRY RUN" in summary and "racecheck driver: all sizes ok" in (out / "racecheck.txt").read_text()


def test_ops_cover_every_op_and_backend(dry_run):
    out, _ = dry_run
    rows = _rows(out / "ops.csv")
    assert {r["op"] for r in rows} == {c.op for c in bench_kernels.QUICK_CASES}
    assert {r["variant"] for r in rows} == {*op_backends(), "compiled"}
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    assert not [r for r in rows if r.get("error")]
    assert all(float(r["err"]) < 1e-5 for r in rows if r["mode"] == "fwd")


def test_steps_and_slogdet_report_each_case(dry_run):
    out, _ = dry_run
    steps = _rows(out / "steps.csv")
    timed = [r for r in steps if r["step_ms"]]
    assert {r["config"] for r in timed} == {"tiny_wolf", "tiny_glow"}
    assert any(r["memory_efficient"] == "True" for r in timed) and all(float(r["img_s"]) > 0 for r in timed)
    assert [r["error"] for r in steps if not r["step_ms"]] == ["skipped: CUDA graphs need a CUDA device"]
    slogdet = _rows(out / "slogdet.csv")
    assert slogdet and all(float(r["fastflow_err"]) < 1e-5 for r in slogdet)


def test_build_falls_back_to_usr_local_cuda(monkeypatch):
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(gpu_check.Path, "is_file", lambda self: str(self) == "/usr/local/cuda/bin/nvcc")
    env = gpu_check.cuda_home()
    assert env["CUDA_HOME"] == "/usr/local/cuda" and env["PATH"].startswith("/usr/local/cuda/bin:")
    command = gpu_check.stage_command("build", Path("/tmp"), dry_run=False, steps_budget=60)
    assert "--no-deps" in command and "--no-build-isolation" in command and "torch" not in " ".join(command[3:])
