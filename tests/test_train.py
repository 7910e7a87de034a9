"""The training loop on the embedded data set (tiny configs, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from fastflow.train.checkpoint import CheckpointError, load_checkpoint
from fastflow.train.config import load_run_config
from fastflow.train.loop import train

FAST = {
    "valid_limit": 64,
    "eval_k": 1,
    "num_samples": 4,
    "sample_temperatures": [1.0],
    "log_interval": 2,
    "batch_size": 16,
    "warmup_steps": 5,
}


def configs(name: str = "tiny_wolf", **overrides):
    return load_run_config(name, {**FAST, **overrides})


def valid_curve(run_dir) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["bpd"]) for r in map(json.loads, lines) if r["split"] == "valid"]


def test_short_run_lowers_validation_bpd_and_writes_its_files(tmp_path):
    model, config = configs(steps=30, valid_interval=15, checkpoint_interval=15)
    summary = train(model, config, tmp_path, progress=False)
    curve = valid_curve(tmp_path)
    assert [s for s, _ in curve] == [0, 15, 30]
    assert curve[-1][1] < curve[0][1] - 0.2, curve
    assert summary["valid_bpd"] == pytest.approx(curve[-1][1]) and summary["skipped_steps"] == 0
    for name in ("config.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "bpd.png", "samples/step0000030_t1.png"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["steps"] == 30 and saved["model"]["kind"] == "wolf"
    train_records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"bpd", "lr", "images_per_s", "grad_norm"} <= set(train_records[1])


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    model, config = configs(steps=12, valid_interval=5, checkpoint_interval=4, batch_steps=2)
    train(model, config, tmp_path / "straight", progress=False)

    class Killed(Exception):
        pass

    def kill_at_step_10(step: int) -> None:  # the checkpoint of step 8 is the last one written
        if step == 10:
            raise Killed

    with pytest.raises(Killed):
        train(model, config, tmp_path / "killed", progress=False, on_step=kill_at_step_10)
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] == 8
    train(model, config, tmp_path / "killed", resume=True, progress=False)

    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 12
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert valid_curve(tmp_path / "straight") == valid_curve(tmp_path / "killed")


def test_truncated_checkpoint_is_refused_on_resume(tmp_path):
    model, config = configs(steps=2, valid_interval=0)
    train(model, config, tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="checkpoint.pt is truncated or corrupt"):
        train(model, config, tmp_path, resume=True, progress=False)


def test_run_folder_rules(tmp_path):
    model, config = configs(steps=1, valid_interval=0)
    with pytest.raises(CheckpointError, match="no checkpoint at .* to resume from"):
        train(model, config, tmp_path, resume=True, progress=False)
    train(model, config, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(model, config, tmp_path, progress=False)
    glow_model, glow_config = configs("tiny_refined_glow", steps=1, valid_interval=0)
    with pytest.raises(CheckpointError, match="holds a 'wolf' model, but the configuration asks for a 'refined_glow'"):
        train(glow_model, glow_config, tmp_path, resume=True, progress=False)


def test_non_finite_gradient_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def poisoned(params, max_norm):
        calls.append(1)
        norm = real(params, max_norm)
        return torch.tensor(float("nan")) if len(calls) == 2 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    model, config = configs(steps=4, valid_interval=0)
    summary = train(model, config, tmp_path, progress=False)
    assert summary["skipped_steps"] == 1
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["scheduler"]["last_epoch"] == 3 and state["skipped_steps"] == 1


@pytest.mark.slow
def test_wolf_versus_refined_glow_with_the_same_steps(tmp_path):
    """Reports the validation bits/dim of tiny Wolf and tiny refined Glow after the same training."""
    results = {}
    for name in ("tiny_wolf", "tiny_refined_glow"):
        model, config = load_run_config(
            name, {"steps": 300, "valid_interval": 0, "eval_k": 5, "num_samples": 4, "sample_temperatures": [1.0]}
        )
        results[name] = train(model, config, tmp_path / name, progress=False)["valid_bpd"]
    print(f"\nvalid bits/dim after 300 steps: {results}")
    assert results["tiny_wolf"] < results["tiny_refined_glow"], results
