"""The trainer's step keeps everything on the device: no host sync from fastflow's code during a whole
step (micro-batches, gradient clipping, the optimiser update, a skipped non-finite step), and the
skipped steps and the running means are read only when the trainer logs or checkpoints."""

from __future__ import annotations

import pytest
import torch

from fastflow.train import distributed as D
from fastflow.train.config import load_run_config
from fastflow.train.loop import Trainer

CPU = D.Context(0, 1, torch.device("cpu"))
FAST = {"valid_interval": 0, "batch_size": 8, "batch_steps": 2, "init_batch_size": 16, "warmup_steps": 3}


def trainer(tmp_path, name: str = "tiny_wolf", **overrides) -> Trainer:
    model, config = load_run_config(name, {**FAST, "steps": 4, **overrides})
    return Trainer(model, config, tmp_path, CPU, progress=False)


def images(seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (8, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_train_step_has_no_host_sync(tmp_path, forbid_syncs, grad_clip):
    t = trainer(tmp_path, grad_clip=grad_clip)
    t._train_step(images(0))  # first step: may load the extension and warm caches
    t.step += 1
    before = [p.detach().clone() for p in t.model.parameters()]
    forbid_syncs()
    bpd, kl, norm = t._train_step(images(1))
    t.step += 1
    assert all(v.dim() == 0 for v in (bpd, kl, norm))
    assert any(not torch.equal(p, b) for p, b in zip(t.model.parameters(), before))  # the update was applied
    assert torch.isfinite(norm) and norm > 0 and torch.isfinite(bpd)


def test_non_finite_step_is_skipped_on_the_device_and_counted(tmp_path, forbid_syncs, monkeypatch):
    """A NaN gradient norm leaves parameters and AdamW state untouched without a host sync; the skip is
    counted when read, and the schedule is wound back to the updates applied."""
    t = trainer(tmp_path)
    t._train_step(images(0))
    t.step += 1
    t.read_step_counts()
    params = [p.detach().clone() for p in t.model.parameters()]
    state = {k: v.clone() for k, v in t.optimizer.state[next(t.model.parameters())].items()}
    lr = t.optimizer.param_groups[0]["lr"]
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, m: real(p, m) * float("nan"))
    forbid_syncs()
    _, _, norm = t._train_step(images(1))
    t.step += 1
    monkeypatch.undo()  # syncs allowed again, real clip_grad_norm_
    assert torch.isnan(norm)
    assert all(torch.equal(p, b) for p, b in zip(t.model.parameters(), params))
    after = t.optimizer.state[next(t.model.parameters())]
    assert all(torch.equal(after[k], v) for k, v in state.items())  # step count too
    assert t.skipped == 0 and float(t.pending_skips) == 1
    t.read_step_counts()
    assert t.skipped == 1 and float(t.pending_skips) == 0
    assert t.scheduler.last_epoch == 1 and t.optimizer.param_groups[0]["lr"] == lr
    t._train_step(images(2))  # the next update goes ahead
    assert not all(torch.equal(p, b) for p, b in zip(t.model.parameters(), params))


def test_logged_means_match_the_losses_of_the_steps(tmp_path):
    """The window's device sums, read at the log interval, are the means of the steps' values."""
    t = trainer(tmp_path, log_interval=2, steps=2)
    values = []
    real_step = t._train_step

    def recording(x):
        out = real_step(x)
        values.append([float(v) for v in out])
        return out

    t._train_step = recording
    t.run()
    record = [r for r in t.metrics.read() if r["split"] == "train"][0]
    assert record["bpd"] == pytest.approx(sum(v[0] for v in values) / 2, rel=1e-6)
    assert record["grad_norm"] == pytest.approx(sum(v[2] for v in values) / 2, rel=1e-6)
