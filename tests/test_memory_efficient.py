"""Memory-efficient backprop (inputs recomputed from outputs through the exact inverse) and mixed
precision.

Tolerances: float64 gradients equal standard backprop to 1e-10 relative (per tensor, relative to its
largest entry); float32 to 1e-3 relative; parameters after 5 Adam steps to 1e-9 (float64) and 1e-4
(float32) absolute.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from fastflow.config import load_model_config
from fastflow.models import build_model


def images(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=gen, dtype=torch.uint8)


def model_pair(name: str, dtype: torch.dtype, steps: int = 2) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two identical initialised models, the second memory-efficient."""
    cfg = load_model_config(name)
    cfg = dataclasses.replace(cfg, flow=dataclasses.replace(cfg.flow, num_steps=[1, [steps, steps], steps]))
    torch.manual_seed(0)
    standard = build_model(cfg).to(dtype)
    standard.initialize(images(32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # off the identity init, so every coupling has a gradient
        for p in standard.parameters():
            p.add_(0.02 * torch.randn_like(p))
    efficient = build_model(dataclasses.replace(cfg, memory_efficient=True)).to(dtype)
    efficient.load_state_dict(standard.state_dict())
    return standard, efficient


def gradients(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model.loss(x, generator=torch.Generator().manual_seed(1))["loss"].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["tiny_wolf", "tiny_refined_glow"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-3)])
def test_gradients_equal_standard_backprop(name: str, dtype: torch.dtype, rtol: float) -> None:
    standard, efficient = model_pair(name, dtype)
    x = images(4, seed=2)
    expected, got = gradients(standard, x), gradients(efficient, x)
    assert expected.keys() == got.keys() and len(got) == len(list(standard.parameters()))
    for key, g in expected.items():
        scale = g.abs().max().clamp_min(1e-30)
        torch.testing.assert_close(got[key] / scale, g / scale, atol=rtol, rtol=0, msg=key)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_parameters_agree_after_five_steps(dtype: torch.dtype, atol: float) -> None:
    standard, efficient = model_pair("tiny_wolf", dtype)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (standard, efficient)]
    for step in range(5):
        x = images(4, seed=10 + step)
        for model, opt in zip((standard, efficient), opts):
            opt.zero_grad()
            model.loss(x, generator=torch.Generator().manual_seed(step))["loss"].backward()
            opt.step()
    for (name, a), (_, b) in zip(standard.named_parameters(), efficient.named_parameters()):
        torch.testing.assert_close(b, a, atol=atol, rtol=0, msg=name)


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training step."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss(x)["loss"]
    loss.backward()
    return total


def test_activation_memory_is_flat_in_depth() -> None:
    x = images(16)
    standard, efficient = {}, {}
    for steps in (1, 6):
        a, b = model_pair("tiny_wolf", torch.float32, steps)
        standard[steps], efficient[steps] = saved_activation_bytes(a, x), saved_activation_bytes(b, x)
    assert efficient[6] < 1.2 * efficient[1]  # (nearly) flat in the number of steps
    assert standard[6] > 2.5 * standard[1]  # standard backprop grows with depth
    assert efficient[6] < 0.15 * standard[6]  # and is far below it


def test_recompute_error_is_monitored() -> None:
    _, efficient = model_pair("tiny_wolf", torch.float64)
    monitor = efficient.set_memory_efficient(True, tolerance=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradients(efficient, images(4))  # float64 and well conditioned: no warning
        monitor.flush()
    assert 0 < monitor.max_error < 1e-12 and monitor.worst_layer.startswith("flow.")
    _, efficient32 = model_pair("tiny_wolf", torch.float32)
    monitor32 = efficient32.set_memory_efficient(True, tolerance=1e-12)  # float32 rounding exceeds this
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradients(efficient32, images(4))  # the errors stay on the device until read
    with pytest.warns(RuntimeWarning, match=r"input of flow\.\S+ was recomputed with max error"):
        monitor32.flush()
    assert monitor32.max_error > 1e-12 and set(monitor32.errors) == set(monitor.errors)


def test_glow_has_no_memory_efficient_mode() -> None:
    with pytest.raises(ValueError, match="refined-Glow decoder"):
        build_model("tiny_glow").set_memory_efficient(True)


def real_patches(n: int) -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    photo = np.asarray(load_sample_images().images[1])
    patches = [photo[r : r + 16, c : c + 16] for r in range(0, 400, 40) for c in range(0, 600, 40)]
    return torch.from_numpy(np.stack(patches[:n])).permute(0, 3, 1, 2).contiguous()


# memory_efficient=True takes 25 s: in `make test-all` only (its float32/float64 gradients equal standard
# backprop's in test_gradients_equal_standard_backprop).
@pytest.mark.parametrize("memory_efficient", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_bfloat16_autocast_training_lowers_bits_per_dim(memory_efficient: bool) -> None:
    torch.manual_seed(0)
    x = real_patches(64)
    model = build_model(dataclasses.replace(load_model_config("tiny_wolf"), memory_efficient=memory_efficient))
    model.initialize(x)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(25):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.loss(x, generator=torch.Generator().manual_seed(step))
        assert out["loss"].dtype == torch.float32 and torch.isfinite(out["bpd"]).all()
        opt.zero_grad()
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(out["loss"].item())
    assert np.mean(losses[-5:]) < losses[0] - 0.3, losses
