"""SIGTERM and SIGINT stop `fastflow train` at a step boundary with checkpoint.pt written, one line on how
to resume, and exit code 128 + the signal number; `--resume` then continues bit-exactly. Real
training processes (the CLI on the embedded data, tiny_wolf), signalled from outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import gloo_rank_envs

from fastflow.train import distributed as D
from fastflow.train.checkpoint import load_checkpoint
from fastflow.train.stop import StopOnSignal, TrainingStopped

SETTINGS = {
    "batch_size": 8,
    "init_batch_size": 16,
    "warmup_steps": 2,
    "valid_interval": 0,
    "checkpoint_interval": 1000,  # the only checkpoint.pt is the one the signal makes
    "log_interval": 1,  # a metrics line per step: the test sees the steps go by
    "valid_limit": 8,
    "eval_k": 1,
    "num_samples": 4,
    "sample_temperatures": [1.0],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_command(out: Path, steps: int, resume: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "fastflow.cli", "train", "--out", str(out), "--steps", str(steps)]
    argv += ["--threads", "1", "--no-progress", "--device", "cpu"]
    if resume:
        return [*argv, "--resume"]
    argv += ["--config", "tiny_wolf"]
    for key, value in SETTINGS.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [r["step"] for r in records if r["split"] == "train"]


def wait_for_step(procs: list[subprocess.Popen], out: Path, step: int, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not logged_steps(out) or max(logged_steps(out)) < step:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"training ended before step {step}: {p.communicate()[1][-3000:]}")
        if time.monotonic() > end:
            pytest.fail(f"no step {step} within {timeout} s")
        time.sleep(0.1)


def start(argv: list[str], env: dict[str, str] = ENV) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(argv: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_same_parameters(a: Path, b: Path) -> None:
    left, right = load_checkpoint(a), load_checkpoint(b)
    assert left["step"] == right["step"]
    assert left["model"].keys() == right["model"].keys()
    for key, value in left["model"].items():
        assert torch.equal(value, right["model"][key]), key


def stop_a_run(out: Path, signum: int, whole_job: bool = False) -> int:
    """Start a 200-step run in ``out``, send ``signum`` once it has logged step 2, and check how it
    stopped: exit code 128 + signum, checkpoint.pt of the last logged step, one line on how to resume,
    no temporary file left. Returns that step. ``whole_job``: the run has 2 data-loader workers and the
    signal goes to its whole process group, as Ctrl-C in a terminal and SLURM send it."""
    argv = train_command(out, 200) + (["--set", "workers=2"] if whole_job else [])
    proc = subprocess.Popen(
        argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=whole_job
    )
    try:
        wait_for_step([proc], out, 2)
        if whole_job:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err[-3000:]
    step = max(logged_steps(out))
    assert 2 <= step < 200
    assert load_checkpoint(out / "checkpoint.pt")["step"] == step
    lines = [line for line in err.splitlines() if "--resume" in line]
    assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name} after step {step}" in lines[0], err[-3000:]
    assert f"--out {out} --resume" in lines[0]
    assert not list(out.glob(".*.tmp"))
    return step


def test_sigterm_stops_at_a_step_and_resume_continues_bit_exactly(tmp_path):
    """SIGTERM (what SLURM and Kubernetes send), then --resume for two more steps: the parameters equal
    those of a run that never stopped."""
    stopped = tmp_path / "stopped"
    step = stop_a_run(stopped, signal.SIGTERM)
    run(train_command(stopped, step + 2, resume=True))
    straight = tmp_path / "straight"
    run(train_command(straight, step + 2))
    assert_same_parameters(stopped / "checkpoint.pt", straight / "checkpoint.pt")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_every_process_of_the_job_with_data_workers(tmp_path, signum):
    """Ctrl-C in a terminal (SIGINT) and SLURM (SIGTERM) signal every process of the job: the data-loader
    workers get it too and ignore it (a worker killed by SIGTERM would fail the main process's next batch)."""
    stop_a_run(tmp_path / "run", signum, whole_job=True)


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Two gloo processes; only rank 1 is signalled. Both stop at the same step boundary, rank 0
    writes checkpoint.pt of that step and prints the line, both exit 128 + 15."""
    out = tmp_path / "run"
    procs = [start(train_command(out, 200), env) for env in gloo_rank_envs(ENV)]
    try:
        wait_for_step(procs, out, 2)
        procs[1].send_signal(signal.SIGTERM)
        errors = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, errors[1][-3000:]
    step = max(logged_steps(out))
    assert load_checkpoint(out / "checkpoint.pt")["step"] == step
    assert f"stopped by SIGTERM after step {step}" in errors[0]
    assert "--resume" not in errors[1]  # one line, from rank 0


def test_the_first_signal_is_recorded_and_a_second_takes_the_default_action():
    """In this process: the first SIGTERM only sets the request (the step goes on), and leaves both
    signals at their default action, so a second one ends the process at once; the boundary check
    saves and raises; leaving the block restores the previous handlers."""
    saved = []
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    ctx = D.Context(0, 1, torch.device("cpu"))
    with StopOnSignal(ctx, lambda: saved.append(True), Path("run/checkpoint.pt")) as stopper:
        stopper.at_step_boundary(3)  # nothing received: goes on
        assert stopper.signum == 0 and not saved
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL == signal.getsignal(signal.SIGINT)
        with pytest.raises(TrainingStopped) as stopped:
            stopper.at_step_boundary(4)
    assert saved == [True]
    assert stopped.value.exit_code == 128 + signal.SIGTERM and stopped.value.step == 4
    assert {s: signal.getsignal(s) for s in before} == before
