"""Model options without a test of their own before: float16 autocast with a grad scaler, 5-bit
images end to end (config file, training, evaluation, sampling, reconstruction), and Glow with a
dense (``lu: false``) 1x1 convolution."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from fastflow import cli
from fastflow.config import bundled_config_path, load_model_config
from fastflow.flows import Flow, InvertibleConv1x1, LUConv1x1, weight_statistics
from fastflow.inference import commands
from fastflow.inference.rundir import load_run
from fastflow.models import build_model
from fastflow.models import preprocess as pp


def images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def real_patches(n: int, size: int = 16) -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    photo = np.asarray(load_sample_images().images[0])
    patches = [photo[r : r + size, c : c + size] for r in range(0, 400, 40) for c in range(0, 600, 40)]
    return torch.from_numpy(np.stack(patches[:n])).permute(0, 3, 1, 2).contiguous()


# -- float16 autocast with a grad scaler -------------------------------------------------------------
def initialised(config, x: torch.Tensor, perturb: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(config)
    model.initialize(x, generator=torch.Generator().manual_seed(0))
    if perturb:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # off the identity init so every network has a gradient
            for p in model.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=gen))
    return model


def flat_gradient(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_float16_autocast_gradients_through_a_grad_scaler_match_float32() -> None:
    """Loss, v and logdets stay float32 under float16 autocast; the gradients through a grad scaler
    (2**10: no overflow in this model; 2**12 overflows in the encoder and the scaler would skip the
    step), unscaled, agree with the float32 ones to 3e-2 of the gradient's norm (measured 9e-3: the
    float16 rounding of the conditioning networks)."""
    x = real_patches(16)
    model = initialised(load_model_config("tiny_wolf"), x, perturb=0.02)
    model.zero_grad()
    model.loss(x, generator=torch.Generator().manual_seed(3))["loss"].backward()
    expected = flat_gradient(model)

    model.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with torch.autocast("cpu", dtype=torch.float16):
        out = model.loss(x, generator=torch.Generator().manual_seed(3))
        _, v = model.encode(x)
    assert out["loss"].dtype == torch.float32 and v.dtype == torch.float32
    scaler.scale(out["loss"]).backward()
    scaler.unscale_(optimizer)
    got = flat_gradient(model)
    assert torch.isfinite(got).all()
    assert got.shape == expected.shape
    error = torch.linalg.vector_norm(got - expected) / torch.linalg.vector_norm(expected)
    assert error < 3e-2, float(error)
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 2.0**10  # the step was taken, not skipped as non-finite


@pytest.mark.parametrize("name", ["tiny_wolf", "tiny_glow"])
def test_float16_autocast_keeps_every_flow_layer_in_float32(name: str) -> None:
    """Only the conditioning networks may run in float16: every invertible layer (decoder flow and z
    prior, their 1x1 convs and couplings) returns float32 outputs and logdets in the loss and in
    decode, and the posterior's mu and log-variance are float32."""
    x = real_patches(8)
    model = initialised(load_model_config(name), x, perturb=0.02)
    seen = []

    def record(module, inputs, outputs) -> None:
        seen.append((type(module).__name__, outputs[0].dtype, outputs[1].dtype))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, Flow)]
    with torch.autocast("cpu", dtype=torch.float16):
        out = model.loss(x, generator=torch.Generator().manual_seed(0))
        z, v = model.encode(x)
        decoded = model.decode(z, v)
    for hook in hooks:
        hook.remove()
    assert len(seen) > 10
    assert all(y == logdet == torch.float32 for _, y, logdet in seen), sorted(set(seen))
    assert out["loss"].dtype == out["kl"].dtype == v.dtype == torch.float32
    if z is not None:
        mu, log_var = model._posterior(pp.bins_to_unit(pp.to_bins(x, 8), 8))
        assert z.dtype == mu.dtype == log_var.dtype == torch.float32
    assert torch.equal(decoded, x)


def test_float16_autocast_training_with_a_grad_scaler_lowers_bits_per_dim() -> None:
    x = real_patches(32)
    model = initialised(load_model_config("tiny_wolf"), x)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1000)
    losses = []
    for step in range(20):
        with torch.autocast("cpu", dtype=torch.float16):
            out = model.loss(x, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        scaler.scale(out["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(out["loss"].item())
    assert scaler.get_scale() >= 2.0**14, "more than two steps were skipped as non-finite"
    assert np.mean(losses[-3:]) < losses[0] - 0.3, losses


# -- 5-bit images ------------------------------------------------------------------------------------------
def test_five_bit_bits_per_dim_on_uniform_noise_is_analytic() -> None:
    """As the 8-bit case in test_models: right after init, uniform 5-bit noise costs
    4 + log2(2 pi e / 3) / 2 = 5.2543 bits/dim (the 8-bit constants would give about 8.25)."""
    config = dataclasses.replace(load_model_config("tiny_refined_glow"), n_bits=5)
    model = initialised(config, images(32))
    with torch.no_grad():
        bpd = model.loss(images(64, seed=5), generator=torch.Generator().manual_seed(1))["bpd"]
    assert abs(bpd.mean().item() - (4 + 0.5 * math.log2(2 * math.pi * math.e / 3))) < 0.05


def test_five_bit_wolf_end_to_end(tmp_path, capsys) -> None:
    """A config file with ``n_bits: 5`` through train, eval, sample and reconstruct: validation in
    5-bit units (below 5 bits/dim, falling with training), samples on the 5-bit grid (multiples of 8),
    decode(encode(x)) = x reduced to 5 bits."""
    data = json.loads(bundled_config_path("tiny_wolf").read_text())
    data["model"]["n_bits"] = 5
    config_path = tmp_path / "wolf5.json"
    config_path.write_text(json.dumps(data))
    run = tmp_path / "run"
    flags = ["--set", "valid_interval=10", "--set", "valid_limit=32", "--set", "eval_k=1", "--set", "warmup_steps=2"]
    flags += ["--set", "num_samples=4", "--set", "sample_temperatures=[1.0]", "--batch-size", "16", "--no-progress"]
    assert cli.main(["train", "--config", str(config_path), "--out", str(run), "--steps", "20", *flags]) == 0
    valid = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r["bpd"] for r in valid if r["split"] == "valid"]
    assert len(valid) == 3 and 0 < valid[-1] < valid[0] < 5.0, valid

    loaded = load_run(run)
    assert loaded.model.config.n_bits == 5
    assert cli.main(["eval", str(run), "--k", "1", "--limit", "16"]) == 0
    assert 0 < json.loads((run / "eval_valid.json").read_text())["bpd"] < 5.0
    samples = loaded.model.sample(8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert (samples % 8 == 0).all() and len(samples.unique()) > 4
    x = commands.pick_images(commands.run_datasets(loaded)["valid"], 8, seed=0)
    assert torch.equal(loaded.model.decode(*loaded.model.encode(x)), x // 8 * 8)
    assert commands.reconstruct(loaded, n=8)["max_pixel_error"] <= 7
    capsys.readouterr()


# -- Glow with a dense 1x1 convolution ----------------------------------------------------------------------
GLOW = {"kind": "glow", "image_size": 4, "flow": {"levels": 2, "num_steps": [2, 1], "hidden_channels": [8, 8]}}


def glow_config(lu: bool):
    return load_model_config({**GLOW, "flow": {**GLOW["flow"], "lu": lu}})


def test_glow_lu_false_uses_a_dense_1x1_convolution() -> None:
    """``lu: false`` swaps every LU-parameterised 1x1 conv (lower + upper + log_s: 2 c^2 + c
    parameters) for a dense one (c^2). Channels after the squeezes: 12 (two steps), then 24 (one)."""
    dense, lu = build_model(glow_config(False)), build_model(glow_config(True))
    assert not any(isinstance(m, LUConv1x1) for m in dense.modules())
    assert sum(isinstance(m, InvertibleConv1x1) for m in dense.modules()) == 3
    count = [sum(p.numel() for p in m.parameters()) for m in (lu, dense)]
    assert count[0] - count[1] == 2 * (12**2 + 12) + (24**2 + 24)


def test_glow_lu_false_logdet_inverse_and_training() -> None:
    """The dense-conv Glow: logdet against the brute-force Jacobian (float64, perturbed weights),
    exact inverse, and an exact decode(encode(x)) after Adam steps that lower bits/dim."""
    model = build_model(glow_config(False)).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=gen) * 2 - 1
    with weight_statistics(model):
        v, logdet = model.flow(x)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda t: model.flow(t.view(1, 3, 4, 4))[0].flatten(), x[i].flatten())
        sign, truth = np.linalg.slogdet(jac.numpy())
        assert sign != 0 and abs(logdet[i].item() - truth) < 1e-8
    with torch.no_grad(), weight_statistics(model, need_inverse=True):
        back, _ = model.flow.inverse(v)
    torch.testing.assert_close(back, x, atol=1e-10, rtol=0)

    torch.manual_seed(0)
    model = build_model(glow_config(False))
    data = real_patches(32, size=4)
    model.initialize(data)
    weights_before = [m.weight.detach().clone() for m in model.modules() if isinstance(m, InvertibleConv1x1)]
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    with torch.no_grad():
        before = model.loss(data, generator=torch.Generator().manual_seed(9))["bpd"].mean().item()
    for step in range(15):
        optimizer.zero_grad()
        model.loss(data, generator=torch.Generator().manual_seed(step))["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        after = model.loss(data, generator=torch.Generator().manual_seed(9))["bpd"].mean().item()
    assert after < before - 0.1, (before, after)
    weights_after = [m.weight for m in model.modules() if isinstance(m, InvertibleConv1x1)]
    assert all(not torch.equal(a, b) for a, b in zip(weights_before, weights_after))
    assert torch.equal(model.decode(*model.encode(data)), data)
