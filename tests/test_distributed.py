"""Two CPU processes (gloo, launched by torchrun) train in lockstep with identical parameters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

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
