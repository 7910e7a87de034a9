"""Training options that a broken implementation would otherwise pass silently: best.pt across a kill
and resume, the time limit, gradient clipping, the epochs budget, ``train_k``, data-loader workers
and ``--threads auto`` (tiny configs on the CPU, a few steps each)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fastflow import cli
from fastflow.data import TensorImageDataset, build_datasets
from fastflow.models import build_model
from fastflow.seeding import TRAIN_STREAM, mix_seed
from fastflow.train import distributed as D
from fastflow.train import loop
from fastflow.train.checkpoint import load_checkpoint
from fastflow.train.config import load_run_config
from fastflow.train.loop import Trainer, train

FAST = {
    "valid_limit": 32,
    "eval_k": 1,
    "num_samples": 4,
    "sample_temperatures": [1.0],
    "log_interval": 1,
    "batch_size": 8,
    "init_batch_size": 32,
    "warmup_steps": 2,
}
CPU = D.Context(0, 1, torch.device("cpu"))


def configs(name: str = "tiny_wolf", **overrides):
    return load_run_config(name, {**FAST, **overrides})


def records(run_dir, split: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


class Killed(Exception):
    pass


# -- best.pt ------------------------------------------------------------------------------------
def test_best_checkpoint_survives_a_kill_and_a_resume(tmp_path, monkeypatch):
    """Validations at steps 0, 2, 4 | kill at 5 | resume, 6 give bits/dim 5.0, 4.0, 4.5 | 4.8: best.pt
    must stay the step-2 model throughout (4.5 and 4.8 are worse than 4.0, though 4.8 is better than
    anything a resumed run that forgot its best value would compare with)."""
    scripted = iter([5.0, 4.0, 4.5, 4.8])

    def fake_evaluate(*args, **kwargs):
        return {"bpd": next(scripted), "kl_bpd": 0.0, "images": 1}

    monkeypatch.setattr(loop, "evaluate_bpd", fake_evaluate)
    model, config = configs("tiny_refined_glow", steps=6, valid_interval=2, checkpoint_interval=2)
    seen = {}

    def on_step(step: int) -> None:
        if step in (2, 4):
            best = load_checkpoint(tmp_path / "best.pt")
            seen[step] = (best["step"], best["best_valid_bpd"])
        if step == 2:
            seen["model"] = {k: v.clone() for k, v in load_checkpoint(tmp_path / "checkpoint.pt")["model"].items()}
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(model, config, tmp_path, progress=False, on_step=on_step)
    assert seen[2] == (2, 4.0) and seen[4] == (2, 4.0)
    summary = train(model, config, tmp_path, resume=True, progress=False)
    assert next(scripted, None) is None  # all four validations ran
    assert summary["best_valid_bpd"] == 4.0 and summary["valid_bpd"] == 4.8
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 2 and best["best_valid_bpd"] == 4.0
    for key, value in seen["model"].items():
        assert torch.equal(best["model"][key], value), key
    assert load_checkpoint(tmp_path / "checkpoint.pt")["best_valid_bpd"] == 4.0


# -- the time limit ----------------------------------------------------------------------------------
def test_time_limit_stops_validates_and_checkpoints_then_resume_continues(tmp_path, capsys):
    """``--time-limit 0.001``: the deadline has passed after the first update, so the run ends at step 1
    of 50 with a validation and a checkpoint; ``--resume`` without a limit then continues to the end."""
    run = tmp_path / "run"
    flags = ["--no-progress", "--set", "valid_interval=0", "--set", "valid_limit=16", "--set", "eval_k=1"]
    flags += ["--set", "num_samples=4", "--set", "sample_temperatures=[1.0]", "--batch-size", "8"]
    argv = ["train", "--config", "tiny_refined_glow", "--out", str(run), "--steps", "50", *flags]
    assert cli.main([*argv, "--time-limit", "0.001"]) == 0
    assert "to step 1 of 50" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 1
    assert [r["step"] for r in records(run, "valid")] == [1]
    assert cli.main(["train", "--out", str(run), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert "to step 3 of 3" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3


# -- gradient clipping --------------------------------------------------------------------------------
def gradient_norms_at_update(trainer: Trainer) -> list[float]:
    """Record the total gradient norm the optimiser sees at each update."""
    norms = []

    def record(optimizer, args, kwargs) -> None:
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    trainer.optimizer.register_step_pre_hook(record)
    return norms


@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_grad_clip_bounds_the_norm_the_optimizer_sees(tmp_path, grad_clip):
    """The logged grad_norm is the norm before clipping (well above 0.05 for this model); the
    optimiser sees at most ``grad_clip``, or the full norm when clipping is off (0)."""
    model, config = configs("tiny_refined_glow", steps=3, valid_interval=0, grad_clip=grad_clip)
    trainer = Trainer(model, config, tmp_path, CPU, progress=False)
    norms = gradient_norms_at_update(trainer)
    trainer.run()
    logged = [r["grad_norm"] for r in records(tmp_path, "train")]
    assert len(norms) == len(logged) == 3 and min(logged) > 1.0
    if grad_clip:
        assert max(norms) == pytest.approx(grad_clip, rel=1e-4)
    else:
        assert norms == pytest.approx(logged, rel=1e-5)


# -- the epochs budget -------------------------------------------------------------------------------
def small_embedded(train_images: int, valid_images: int):
    train_set, valid_set = build_datasets("embedded", None, 16)

    def head(dataset, n: int) -> TensorImageDataset:
        return TensorImageDataset(dataset.images[:n].clone(), dataset.labels[:n].clone())

    return head(train_set, train_images), head(valid_set, valid_images)


def test_steps_zero_trains_for_the_epochs_budget(tmp_path, monkeypatch):
    """``steps: 0, epochs: 2`` on 36 training images in batches of 8: 4 updates per epoch (the last
    partial batch dropped), 8 in all, each epoch a different permutation of the same images."""
    small = small_embedded(36, 8)
    monkeypatch.setattr(loop, "build_datasets", lambda *args: small)
    model, config = configs("tiny_refined_glow", steps=0, epochs=2, valid_interval=0)
    trainer = Trainer(model, config, tmp_path, CPU, progress=False)
    seen = []
    real_step = trainer._train_step
    trainer._train_step = lambda images: seen.append(images.clone()) or real_step(images)
    summary = trainer.run()
    assert summary["step"] == summary["total_steps"] == 8
    assert [(r["step"], r["epoch"]) for r in records(tmp_path, "train")] == [(s, (s - 1) // 4) for s in range(1, 9)]
    epochs = [torch.cat(seen[:4]), torch.cat(seen[4:])]
    assert all(e.shape[0] == 32 for e in epochs) and not torch.equal(epochs[0], epochs[1])


# -- train_k ---------------------------------------------------------------------------------------
def test_train_k_averages_k_draws_in_the_training_loss(tmp_path):
    """The first update's loss with ``train_k: 3`` is model.loss(batch, num_samples=3) with the step's
    generator (seed, rank 0, step 0), on the parameters before the update; with k = 1 it differs."""
    losses = {}
    for k in (1, 3):
        model, config = configs("tiny_wolf", steps=1, valid_interval=0, train_k=k)
        trainer = Trainer(model, config, tmp_path / f"k{k}", CPU, progress=False)
        before = {name: t.clone() for name, t in trainer.model.state_dict().items()}
        captured = []
        real_step = trainer._train_step

        def capture(images, real_step=real_step, captured=captured):
            captured.append(images.clone())
            return real_step(images)

        trainer._train_step = capture
        trainer.run()
        reported = records(tmp_path / f"k{k}", "train")[0]["bpd"]
        reference = build_model(model)
        reference.load_state_dict(before)
        reference.train()
        generator = torch.Generator().manual_seed(mix_seed(config.seed, 0, 0, TRAIN_STREAM))
        with torch.no_grad():
            expected = reference.loss(captured[0], num_samples=k, generator=generator)["loss"].item()
        assert reported == pytest.approx(expected, rel=1e-7, abs=0)
        losses[k] = reported
    assert abs(losses[1] - losses[3]) > 1e-5  # 100 times the tolerance above


# -- data-loader workers ---------------------------------------------------------------------------------
def test_workers_see_the_same_batches_as_the_main_process(tmp_path):
    """Augmented batches and validation with 2 worker processes equal those of ``workers: 0``, so the
    parameters after training are identical."""
    results = {}
    for workers in (0, 2):
        model, config = configs("tiny_refined_glow", steps=3, valid_interval=3, workers=workers)
        trainer = Trainer(model, config, tmp_path / f"w{workers}", CPU, progress=False)
        seen = []
        real_step = trainer._train_step
        trainer._train_step = lambda images, seen=seen, real_step=real_step: seen.append(images) or real_step(images)
        summary = trainer.run()
        results[workers] = (seen, trainer.model.state_dict(), summary["valid_bpd"])
    (seen0, state0, bpd0), (seen2, state2, bpd2) = results[0], results[2]
    assert len(seen0) == len(seen2) == 3
    for a, b in zip(seen0, seen2):
        assert torch.equal(a, b)
    for key in state0:
        assert torch.equal(state0[key], state2[key]), key
    assert bpd0 == bpd2


# -- --threads auto --------------------------------------------------------------------------------------
@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("load, expected", [(0.0, 6), (2.4, 6), (2.6, 5), (7.6, 1), (30.0, 1)])
def test_threads_auto_takes_the_idle_cores(monkeypatch, restore_threads, load, expected):
    """8 cores, PyTorch's default 6 threads: auto = max(1, min(6, 8 - round(load)))."""
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (load, 0.0, 0.0))
    torch.set_num_threads(6)
    cli.set_threads("auto")
    assert torch.get_num_threads() == expected


def test_train_threads_auto_is_applied(tmp_path, monkeypatch, restore_threads):
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    torch.set_num_threads(4)
    run = tmp_path / "run"
    argv = ["train", "--config", "tiny_refined_glow", "--out", str(run), "--steps", "1", "--threads", "auto"]
    argv += ["--set", "valid_interval=0", "--set", "valid_limit=8", "--set", "eval_k=1", "--set", "num_samples=4"]
    assert cli.main([*argv, "--set", "sample_temperatures=[1.0]", "--batch-size", "8", "--no-progress"]) == 0
    assert torch.get_num_threads() == 3
    assert math.isfinite(load_checkpoint(run / "checkpoint.pt")["best_valid_bpd"])
