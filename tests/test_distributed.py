"""Two CPU processes (gloo, launched by torchrun) train in lockstep with identical parameters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import gloo_rank_envs

WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    from fastflow.train import distributed as D
    from fastflow.train.config import load_run_config
    from fastflow.train.loop import Trainer

    out = Path(sys.argv[1])
    model_config, config = load_run_config("tiny_wolf", {
        "steps": 3, "batch_size": 8, "batch_steps": 2, "init_batch_size": 32, "valid_interval": 0,
        "valid_limit": 16, "eval_k": 1, "num_samples": 4, "sample_temperatures": [1.0]})
    ctx = D.setup("cpu")
    trainer = Trainer(model_config, config, out / "run", ctx, progress=False)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.run()
    torch.save({"rank": ctx.rank, "world_size": ctx.world_size, "initial": initial,
                "final": trainer.model.state_dict(), "summary": summary}, out / f"rank{ctx.rank}.pt")
    D.teardown(ctx)
""")


def test_two_gloo_processes_keep_identical_parameters(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world_size"] == 2
    # Rank 0's data-dependent init reached rank 1 (which never ran it) before the first step.
    assert bool(ranks[1]["initial"]["initialized"])
    for key, value in ranks[0]["initial"].items():
        assert torch.equal(value, ranks[1]["initial"][key]), f"initial {key}"
    changed = 0
    for key, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][key]), f"final {key}"
        changed += not torch.equal(value, ranks[0]["initial"][key])
    assert changed > 10  # training moved the parameters
    assert ranks[0]["summary"]["valid_bpd"] == ranks[1]["summary"]["valid_bpd"]
    # Only rank 0 writes the run folder.
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


# One process and two (gloo) on the same global batches: the dequantisation noise, drawn per (seed,
# rank, step) by design, is replaced by the bin centres so that the loss depends on the images alone.
# Refined Glow has no BatchNorm (Wolf's encoder normalises per process on CPUs), so the gradient of
# the global batch is the same sum split two ways, and the parameters agree to float32 rounding.
SAME_BATCH_WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    from fastflow.models import preprocess
    from fastflow.train import distributed as D
    from fastflow.train.config import load_run_config
    from fastflow.train.loop import Trainer

    preprocess.dequantize = lambda bins, n_bits, generator=None: preprocess.bin_centres(bins, n_bits)
    out = Path(sys.argv[1])
    model_config, config = load_run_config("tiny_refined_glow", {
        "steps": 3, "batch_size": 8, "batch_steps": 2, "init_batch_size": 32, "valid_interval": 0,
        "valid_limit": 16, "eval_k": 1, "num_samples": 4, "sample_temperatures": [1.0], "warmup_steps": 0,
        "lr": 1e-3})
    ctx = D.setup("cpu")
    trainer = Trainer(model_config, config, out / "run", ctx, progress=False)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.run()
    if ctx.rank == 0:
        torch.save({"world_size": ctx.world_size, "initial": initial, "final": trainer.model.state_dict(),
                    "valid_bpd": summary["valid_bpd"]}, out / "result.pt")
    D.teardown(ctx)
""")


def test_two_processes_reach_the_parameters_of_one_on_the_same_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SAME_BATCH_WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    launchers = {
        1: [sys.executable, str(script)],
        2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
    }
    results = {}
    for world_size, launcher in launchers.items():
        out = tmp_path / f"world{world_size}"
        result = subprocess.run([*launcher, str(out)], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        results[world_size] = torch.load(out / "result.pt", weights_only=True)
        assert results[world_size]["world_size"] == world_size
    one, two = results[1], results[2]
    for key, value in one["initial"].items():
        assert torch.equal(value, two["initial"][key]), f"initial {key}"
    moved = 0
    for key, value in one["final"].items():
        # Three AdamW steps at lr 1e-3 move a parameter by up to 3e-3; the two runs agree to 1e-6.
        torch.testing.assert_close(two["final"][key], value, atol=1e-6, rtol=1e-5, msg=key)
        moved += not torch.allclose(value.double(), one["initial"][key].double(), atol=1e-4, rtol=0)
    assert moved > 10
    assert two["valid_bpd"] == pytest.approx(one["valid_bpd"], rel=1e-6)


# Rank 0 cannot write its checkpoint. Launched by hand (not torchrun, which tears the group down when
# one worker exits), rank 1 must stop too, saying why. Before, it ran on into the next all-reduce and
# died there with gloo's "Connection closed by peer" traceback (NCCL may instead wait for its watchdog).
FAILING_SAVE_WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    from fastflow.train import distributed as D
    from fastflow.train import loop
    from fastflow.train.checkpoint import CheckpointError
    from fastflow.train.config import load_run_config

    out = Path(sys.argv[1])
    model_config, config = load_run_config("tiny_refined_glow", {
        "steps": 4, "batch_size": 4, "init_batch_size": 8, "valid_interval": 0, "checkpoint_interval": 1,
        "valid_limit": 8, "eval_k": 1, "num_samples": 4, "sample_temperatures": [1.0]})
    ctx = D.setup("cpu")

    def full_disk(path, state):
        raise CheckpointError(f"could not write {path}: No space left on device")

    if ctx.rank == 0:
        loop.save_checkpoint = full_disk
    trainer = loop.Trainer(model_config, config, out / "run", ctx, progress=False)
    trainer.run()
""")


def test_a_failed_rank0_checkpoint_stops_every_rank(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(FAILING_SAVE_WORKER)
    procs = []
    for env in gloo_rank_envs({**os.environ, "OMP_NUM_THREADS": "1"}):
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        errors = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode != 0 for p in procs)
    assert "No space left on device" in errors[0]
    assert "MainRankFailed: rank 0 failed to write checkpoint.pt" in errors[1], errors[1][-2000:]
