"""The device command: one call on a CUDA machine that checks and times fastflow's GPU path.

    bash benchmarks/gpu_check.sh                 # = python -m benchmarks.device.gpu_check: $OUT, else ./gpu_check_out
    bash benchmarks/gpu_check.sh --dry-run       # every stage's plumbing on the CPU (tiny shapes), temp folder

Runs on any CUDA machine with the torch it has (never pip-installs torch), in at most ``--budget``
seconds (470 by default: under 8 minutes on an H200), each stage under its own time cap so that a slow
stage cannot eat the rest. Stages, in priority order (STAGES):

1. ``env``: card, driver, Python, torch, triton, nvcc, compute-sanitizer;
2. ``build``: ``pip install --no-deps --no-build-isolation --no-index -e .`` with the CUDA sources for
   this card (``FASTFLOW_BUILD_CUDA=1``, ``TORCH_CUDA_ARCH_LIST`` = its capability; ``CUDA_HOME`` falls
   back to /usr/local/cuda when nvcc is not on PATH);
3. ``tests``: the GPU-relevant tests, in parallel (``pytest -n``) when pytest-xdist is there;
4. ``racecheck``: ``compute-sanitizer --tool racecheck`` over the Gauss-Jordan kernel
   (benchmarks/device/racecheck_gj.py);
5. ``ops``: each fused op per backend, and torch.compile of the reference (benchmarks/device/ops.py);
6. ``slogdet``: the batched log-determinant against torch.linalg.slogdet per config size;
7. ``steps``: whole training steps (benchmarks/device/steps.py), with what budget is left.

Everything goes to one folder (``--out``, else ``$OUT``, else ./gpu_check_out; a new temporary folder
for ``--dry-run``), flat and at most 8 files (the device tool's limits): log.txt, build.log, tests.txt,
racecheck.txt, ops.csv, slogdet.csv, steps.csv, summary.md. summary.md is the GPU block of
benchmarks/RESULTS.md, which the command also rewrites in the tree it runs in (a dry run writes a copy
in a temporary folder instead); ``--results-from DIR`` copies a fetched summary.md into RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import markdown_table, replace_block

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BLOCK = "gpu_check"
GPU_TESTS = [
    "tests/test_actnorm_conv1x1.py",
    "tests/test_affine_coupling.py",
    "tests/test_coupling_actnorm.py",
    "tests/test_cond_bias_elu.py",
    "tests/test_conv1x1_bias_elu.py",
    "tests/test_batched_slogdet.py",
    "tests/test_model_backends.py",
    "tests/test_reference_backend.py",
    "tests/test_memory_efficient.py",
    "tests/test_no_host_sync.py",
    "tests/test_backend.py",
]
DRY_TESTS = ["tests/test_backend.py"]
FILES = ("log.txt", "build.log", "tests.txt", "racecheck.txt", "ops.csv", "slogdet.csv", "steps.csv", "summary.md")


@dataclass
class Stage:
    name: str
    cap_s: int  # at most this long on a GPU (the dry run shares the caps)
    log: str  # the file its output goes to


STAGES = [
    Stage("env", 30, "log.txt"),
    Stage("build", 200, "build.log"),
    Stage("tests", 120, "tests.txt"),
    Stage("racecheck", 60, "racecheck.txt"),
    Stage("ops", 90, "log.txt"),
    Stage("slogdet", 30, "log.txt"),
    Stage("steps", 400, "log.txt"),
]


def cuda_home() -> dict[str, str]:
    """Environment for the build: CUDA_HOME=/usr/local/cuda (and its bin on PATH) when nvcc is not on PATH."""
    if shutil.which("nvcc") or os.environ.get("CUDA_HOME") or not Path("/usr/local/cuda/bin/nvcc").is_file():
        return {}
    return {"CUDA_HOME": "/usr/local/cuda", "PATH": f"/usr/local/cuda/bin:{os.environ.get('PATH', '')}"}


def sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    fallback = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "compute-sanitizer"
    return found or (str(fallback) if fallback.is_file() else None)


def stage_command(stage: str, out: Path, dry_run: bool, steps_budget: int) -> list[str] | str:
    """The command of ``stage`` (a list, or a shell string for env)."""
    py = sys.executable
    flag = ["--dry-run"] if dry_run else []
    if stage == "env":
        probe = (
            "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, "
            "'cuda', torch.version.cuda); import triton; print('triton', triton.__version__); "
            "c = torch.cuda.is_available(); print('card', torch.cuda.get_device_name() if c else 'none', "
            "torch.cuda.get_device_capability() if c else '')"
        )
        return (
            "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | head -3; "
            f'{py} -c "{probe}"; (nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>&1 | tail -1; '
            "echo compute-sanitizer: $(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>&1); "
            "echo cpus: $(nproc); uname -r"
        )
    if stage == "build":
        install = [py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(ROOT)]
        return install + ["--dry-run"] if dry_run else install
    if stage == "tests":
        parallel = ["-n", "8"] if not dry_run and _has_xdist() else []
        tests = DRY_TESTS if dry_run else GPU_TESTS
        return [py, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", "-rfE", *parallel, *tests]
    if stage == "racecheck":
        driver = [py, "-m", "benchmarks.device.racecheck_gj", *flag]
        tool = sanitizer()
        if dry_run or tool is None:
            return driver
        return [tool, "--tool", "racecheck", "--racecheck-report", "all", "--error-exitcode", "3", *driver]
    if stage in ("ops", "slogdet"):
        return [py, "-m", "benchmarks.device.ops", stage, "--out", str(out / f"{stage}.csv"), *flag]
    return [py, "-m", "benchmarks.device.steps", "--out", str(out / "steps.csv"), "--budget", str(steps_budget), *flag]


def _has_xdist() -> bool:
    import importlib.util

    return importlib.util.find_spec("xdist") is not None


def stage_env(stage: str, dry_run: bool, arch: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if dry_run:
        env["TRITON_INTERPRET"] = "1"
        env["FASTFLOW_BUILD_CUDA"] = "0"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env.pop("TRITON_INTERPRET", None)
    if stage == "build" and not dry_run:
        env |= cuda_home() | {"FASTFLOW_BUILD_CUDA": "1", "MAX_JOBS": str(os.cpu_count() or 4)}
        if arch and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            env["TORCH_CUDA_ARCH_LIST"] = arch
    return env


def run_stage(stage: Stage, out: Path, dry_run: bool, timeout: int, arch: str | None) -> dict:
    command = stage_command(stage.name, out, dry_run, steps_budget=max(10, timeout - 20))
    start = time.monotonic()
    with open(out / stage.log, "a") as log:
        log.write(f"\n=== {stage.name}: {command if isinstance(command, str) else ' '.join(command)}\n")
        log.flush()
        try:
            done = subprocess.run(
                command,
                shell=isinstance(command, str),
                cwd=ROOT,
                env=stage_env(stage.name, dry_run, arch),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"stopped at its {timeout} s cap"
    seconds = time.monotonic() - start
    tail = (out / stage.log).read_text().splitlines()[-3:]
    print(f"[{stage.name}] {status} in {seconds:.0f} s | " + " | ".join(line[:100] for line in tail), flush=True)
    return {"stage": stage.name, "status": status, "seconds": seconds}


def card_arch() -> str | None:
    """The card's compute capability as TORCH_CUDA_ARCH_LIST wants it ("9.0"), or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value) if value not in ("", None) and key not in ("batch", "n") else value
            except ValueError:
                pass
    return rows


def summary(out: Path, stages: list[dict], dry_run: bool, command: str) -> str:
    env = (out / "log.txt").read_text().split("=== ops")[0] if (out / "log.txt").is_file() else ""
    env_lines = [line for line in env.splitlines() if line and not line.startswith("===")][:8]
    kind = "DRY RUN on the CPU (plumbing only: these numbers are not speeds)" if dry_run else "GPU"
    parts = [
        f"## GPU device check ({kind})",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `{command}`",
        "```\n" + "\n".join(env_lines) + "\n```",
        markdown_table(stages, [("stage", "stage", ""), ("status", "status", ""), ("s", "seconds", ".0f")]),
    ]
    steps = _read_csv(out / "steps.csv")
    if steps:
        parts.append("### Training steps (median of timed AdamW steps; busy = GPU kernel time of one step)")
        columns = [
            ("config", "config", ""),
            ("batch", "batch", ""),
            ("ME", "memory_efficient", ""),
            ("variant", "variant", ""),
            ("step ms", "step_ms", ".1f"),
            ("img/s", "img_s", ".1f"),
            ("busy ms", "gpu_busy_ms", ".1f"),
            ("peak GiB", "peak_gib", ".2f"),
            ("sync-free", "sync_free", ""),
            ("error", "error", ""),
        ]
        parts.append(markdown_table(steps, columns))
    ops = _read_csv(out / "ops.csv")
    if ops:
        parts.append("### Fused ops (float32; us = median; GB/s from the better of eager and graph)")
        columns = [
            ("op", "op", ""),
            ("case", "case", ""),
            ("mode", "mode", ""),
            ("variant", "variant", ""),
            ("eager us", "eager_us", ".1f"),
            ("graph us", "graph_us", ".1f"),
            ("GB/s", "gbps", ".0f"),
            ("% copy", "pct_copy", ".0f"),
            ("err", "err", ".1e"),
            ("error", "error", ""),
        ]
        parts.append(markdown_table(ops, columns))
    slogdet = _read_csv(out / "slogdet.csv")
    if slogdet:
        parts.append("### Batched slogdet, forward + backward (ms)")
        columns = [
            ("config", "config", ""),
            ("n", "n", ""),
            ("batch", "batch", ""),
            ("fastflow", "fastflow_ms", ".3f"),
            ("torch f32", "torch_f32_ms", ".3f"),
            ("torch f64", "torch_f64_ms", ".3f"),
            ("fastflow err", "fastflow_err", ".1e"),
        ]
        parts.append(markdown_table(slogdet, columns))
    return "\n\n".join(parts) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU, tiny shapes, a temporary folder")
    parser.add_argument("--out", type=Path, default=None, help="default: $OUT, else ./gpu_check_out")
    parser.add_argument("--budget", type=int, default=470, help="seconds for all stages together")
    parser.add_argument("--stages", nargs="+", default=[s.name for s in STAGES], choices=[s.name for s in STAGES])
    parser.add_argument("--results-from", type=Path, default=None, help="copy DIR/summary.md into RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.results_from is not None:
        replace_block(RESULTS, BLOCK, (args.results_from / "summary.md").read_text(), "Benchmark results")
        print(f"wrote the {BLOCK} block of {RESULTS}")
        return 0
    arch = None if args.dry_run else card_arch()
    if not args.dry_run and arch is None:
        print("gpu_check: no CUDA device visible to torch; use --dry-run on a machine without one", file=sys.stderr)
        return 2
    if args.out is not None:
        out = args.out
    elif args.dry_run:
        out = Path(tempfile.mkdtemp(prefix="fastflow_gpu_check_dry_"))
    else:
        out = Path(os.environ.get("OUT") or "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    stages = []
    for stage in STAGES:
        if stage.name not in args.stages:
            continue
        left = int(args.budget - (time.monotonic() - started))
        if left < 10:
            stages.append({"stage": stage.name, "status": "skipped: budget spent", "seconds": 0.0})
            continue
        stages.append(run_stage(stage, out, args.dry_run, min(stage.cap_s, left), arch))
    command = "bash benchmarks/gpu_check.sh" + (" --dry-run" if args.dry_run else "")
    text = summary(out, stages, args.dry_run, command)
    (out / "summary.md").write_text(text)
    results = RESULTS
    if args.dry_run:  # never touch the repository's RESULTS.md from a dry run
        results = Path(tempfile.mkdtemp(prefix="fastflow_gpu_check_results_")) / "RESULTS.md"
        shutil.copy(RESULTS, results)
    replace_block(results, BLOCK, text, "Benchmark results")
    print(text)
    print(f"gpu_check: {len(list(out.iterdir()))} files in {out}; the GPU block written to {results}")
    return 0 if all(s["status"] == "ok" for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
