"""Training pieces that need no model: LR schedule, train config, checkpoint files, RNG state."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from fastflow.config import ConfigError
from fastflow.data import DATASET_NAMES
from fastflow.train import checkpoint as ckpt
from fastflow.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastflow.train.config import default_train_config, load_run_config, train_config_from
from fastflow.train.optimizer import adamw
from fastflow.train.schedule import INIT_LR, lr_at, warmup_exponential


# -- learning-rate schedule --------------------------------------------------------------------------
def test_lr_schedule_values():
    lr, warmup, decay = 1e-3, 50, 0.999997
    assert lr_at(0, lr, warmup, decay) == pytest.approx(1e-7)
    assert lr_at(25, lr, warmup, decay) == pytest.approx(1e-7 + (1e-3 - 1e-7) / 2)
    assert lr_at(50, lr, warmup, decay) == pytest.approx(1e-3)
    assert lr_at(1050, lr, warmup, decay) == pytest.approx(1e-3 * 0.999997**1000)
    assert lr_at(3, lr, 0, 0.5) == pytest.approx(1e-3 / 8)


def test_scheduler_sets_the_optimizer_lr_per_update():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = warmup_exponential(optimizer, 1e-3, warmup_steps=4, decay=0.9)
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [INIT_LR + (1e-3 - INIT_LR) * t / 4 for t in range(4)] + [1e-3 * 0.9**k for k in range(3)]
    assert seen == pytest.approx(expected)


# -- train config ---------------------------------------------------------------------------------
def test_train_defaults_per_dataset():
    assert default_train_config("cifar10").weight_decay == 1e-6
    assert default_train_config("cifar10").batch_size == 512
    for name in ("imagenet64", "lsun", "celeba"):
        c = default_train_config(name)
        assert c.weight_decay == 5e-4 and c.warmup_steps == 200
    assert default_train_config("celeba").batch_size == 40
    c = default_train_config("cifar10")
    assert (c.lr, c.betas, c.eps, c.lr_decay) == (1e-3, [0.9, 0.999], 1e-8, 0.999997)


def test_every_registered_dataset_has_valid_train_defaults():
    for name in DATASET_NAMES:
        assert default_train_config(name).dataset == name


def test_train_block_overrides_defaults_and_rejects_unknown_keys():
    c = train_config_from({"dataset": "imagenet64", "batch_size": 64}, {"steps": 7})
    assert (c.dataset, c.batch_size, c.steps, c.weight_decay) == ("imagenet64", 64, 7, 5e-4)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['batchsize'\] in train"):
        train_config_from({"batchsize": 64})
    with pytest.raises(ConfigError, match="train.dataset must be one of"):
        train_config_from({"dataset": "mnist"})
    with pytest.raises(ConfigError, match=r"train.sample_temperatures\[0\] must be >= 0"):
        train_config_from({"sample_temperatures": [-1.0]})
    with pytest.raises(ConfigError, match="divisible by train.batch_steps"):
        train_config_from({"batch_size": 10, "batch_steps": 3})


def test_run_config_file_rejects_unknown_blocks_and_keys(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(
        '{"model": {"kind": "glow", "image_size": 8, "flow": {"levels": 1, "num_steps": [1], '
        '"hidden_channels": [4]}}, "optim": {}}'
    )
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['optim'\]"):
        load_run_config(path)
    path.write_text(
        '{"model": {"kind": "glow", "image_size": 8, "colour": 1, "flow": {"levels": 1, '
        '"num_steps": [1], "hidden_channels": [4]}}}'
    )
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\] in model"):
        load_run_config(path)


@pytest.mark.parametrize(
    "name", ["tiny_wolf", "demo_wolf", "cifar10_wolf", "imagenet64_refined_glow", "lsun128_glow", "celeba256_wolf"]
)
def test_bundled_configs_resolve_a_train_config(name):
    model, train = load_run_config(name)
    assert model.kind in name and train.lr == 1e-3


# -- checkpoint files ---------------------------------------------------------------------------------
def _state() -> dict:
    return {"kind": "wolf", "step": 3, "model": {"w": torch.randn(4, 4)}, "config": {"a": [1, 2], "b": None}}


def test_checkpoint_round_trip(tmp_path):
    state = _state()
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["config"] == state["config"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_truncated_or_altered_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(CheckpointError, match=r"c\.pt is truncated or corrupt"):
        load_checkpoint(path)
    altered = bytearray(raw)
    altered[-50] ^= 0xFF
    path.write_bytes(bytes(altered))
    with pytest.raises(CheckpointError, match=r"c\.pt is corrupt: its checksum"):
        load_checkpoint(path)
    torch.save(_state(), path)
    with pytest.raises(CheckpointError, match="not a fastflow checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_crash_mid_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    old = _state()
    save_checkpoint(path, old)

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(ckpt.os, "fsync", crash)
    with pytest.raises(CheckpointError, match=r"could not write .*c\.pt: disk gone; the previous c\.pt is unchanged"):
        save_checkpoint(path, {**_state(), "step": 4})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 3
    assert torch.equal(load_checkpoint(path)["model"]["w"], old["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # the temporary file was removed
    # A process killed between write and rename leaves its temporary file behind; it is ignored.
    (tmp_path / ".c.pt.abc.tmp").write_bytes(b"partial")
    assert load_checkpoint(path)["step"] == 3


def test_rename_is_the_commit_point(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(ckpt.os, "replace", lambda src, dst: replaced.append((src, dst)) or real_replace(src, dst))
    save_checkpoint(path, {**_state(), "step": 9})
    assert len(replaced) == 1 and os.path.dirname(replaced[0][0]) == str(tmp_path)
    assert load_checkpoint(path)["step"] == 9


def test_checkpoint_of_another_model_kind_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="holds a 'glow' model, but the configuration asks for a 'wolf'"):
        ckpt.check_model_kind({"kind": "glow"}, "wolf", tmp_path / "c.pt")


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"rng": ckpt.rng_state()})
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    ckpt.set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_adamw_is_fused_and_takes_torchs_default_adamw_steps():
    """The trainer's optimizer: fused on the CPU, and after five steps with the same gradients the
    parameters agree with torch's per-parameter AdamW (same hyperparameters) to float32 rounding,
    having moved far more than that (so wrong betas, eps or weight decay, or no step, would fail)."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    params = [p.clone().requires_grad_() for p in start]
    twins = [p.clone().requires_grad_() for p in start]
    hyper = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.5)
    fused = adamw(params, **hyper)
    plain = torch.optim.AdamW(twins, **hyper, foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for step in range(5):
        for group in (params, twins):
            for p in group:
                p.grad = torch.sin(p.detach() * (step + 1))
        fused.step()
        plain.step()
    for p, twin, p0 in zip(params, twins, start):
        torch.testing.assert_close(p, twin, atol=1e-6, rtol=1e-6)
        assert (p - p0).abs().max() > 1e-2
    meta = torch.nn.Parameter(torch.zeros(2, device="meta"))
    assert not adamw([meta], lr=1e-3).defaults["fused"]  # no fused kernel there: torch's default
