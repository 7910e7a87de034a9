"""Whole models: parameter counts against the paper, exact encode/decode, the Wolf decoder's logdet
against a brute-force Jacobian, bits/dim on noise against the analytic value, learning on real images,
and clear errors on bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fastflow.config import MODEL_KINDS, ConfigError, EncoderConfig, load_model_config
from fastflow.flows import weight_statistics
from fastflow.models import MODELS, build_model
from fastflow.models import preprocess as pp

TINY = ["tiny_wolf", "tiny_refined_glow", "tiny_glow"]


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_model_kind_has_one_class() -> None:
    assert tuple(MODELS) == MODEL_KINDS and all(MODELS[kind].kind == kind for kind in MODEL_KINDS)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("cifar10_refined_glow", 46_521_601),  # paper Table 6: 46.5M
        ("cifar10_wolf", 51_860_457),  # paper Table 6: 51.8M
    ],
)
def test_parameter_counts_match_the_paper(name: str, expected: int) -> None:
    assert count(build_model(name)) == expected


def test_wolf_parameter_breakdown_on_cifar10() -> None:
    model = build_model("cifar10_wolf")
    assert count(model.flow) == 50_394_561
    assert count(model.encoder) == 714_536 + 16_640  # ResNet + the mu / log-variance head
    assert count(model.prior) == 734_720


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)


def initialised(name: str, seed: int = 0, n_bits: int | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = load_model_config(name)
    if n_bits is not None:
        config.n_bits = n_bits
    model = build_model(config)
    model.initialize(images(32, config.image_size, seed), generator=torch.Generator().manual_seed(seed))
    return model


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("n_bits", [8, 5])
def test_encode_decode_is_exact(name: str, n_bits: int) -> None:
    model = initialised(name, n_bits=n_bits)
    x = images(6, model.config.image_size, seed=3)
    z, v = model.encode(x)
    assert v.shape == x.shape and (z is None) == (not model.has_z)
    expected = (pp.to_bins(x, n_bits) * 2 ** (8 - n_bits)).to(torch.uint8)
    assert torch.equal(model.decode(z, v), expected)


@pytest.mark.parametrize("name", TINY)
def test_bfloat16_autocast_keeps_the_main_path_exact(name: str) -> None:
    """Under bfloat16 autocast only the conditioning networks run in low precision: v stays float32
    within bfloat16 noise of the float32 v (5e-2 absolute: the networks' outputs move s and mu by
    bfloat16 rounding), and decode(encode(x)) is still exactly x."""
    model = initialised(name)
    with torch.no_grad():  # off the identity init so the networks matter
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = images(4, model.config.image_size, seed=5)
    z, v = model.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z16, v16 = model.encode(x)
        decoded = model.decode(z16, v16)
    assert v16.dtype == torch.float32
    if z is not None:
        torch.testing.assert_close(z16.float(), z, atol=5e-2, rtol=0)
    torch.testing.assert_close(v16, v, atol=5e-2, rtol=0)
    assert torch.equal(decoded, x)


@pytest.mark.parametrize("name", TINY)
def test_flow_inverse_float64(name: str) -> None:
    model = initialised(name).double()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64) * 2 - 1
    z = torch.randn(3, model.z_dim, dtype=torch.float64) if model.has_z else None
    with torch.no_grad():
        with weight_statistics(model):
            v, logdet = model.flow(x, z)
        with weight_statistics(model, need_inverse=True):
            x_back, logdet_inv = model.flow.inverse(v, z)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(logdet_inv, -logdet, atol=1e-9, rtol=1e-12)


def test_wolf_decoder_logdet_matches_jacobian() -> None:
    """The whole decoder flow of a tiny Wolf (8x8 images, 192 dims), float64, perturbed weights."""
    tiny = load_model_config("tiny_wolf")
    config = dataclasses.replace(tiny, image_size=8, encoder=EncoderConfig(levels=1, hidden_planes=[8], out_planes=4))
    model = build_model(config).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=gen) * 2 - 1
    z = torch.randn(2, model.z_dim, dtype=torch.float64, generator=gen)
    _, logdet = model.flow(x, z)
    for i in range(2):

        def f(flat: torch.Tensor, i: int = i) -> torch.Tensor:
            return model.flow(flat.view(1, 3, 8, 8), z[i : i + 1])[0].flatten()

        jac = torch.autograd.functional.jacobian(f, x[i].flatten())
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=1e-10)


@pytest.mark.parametrize("name", TINY)
def test_bits_per_dim_on_uniform_noise_is_analytic(name: str) -> None:
    """Right after init the flow is a per-channel Gaussian fit; on uniform 8-bit noise (x uniform on
    [-1, 1], variance 1/3) that costs 7 + log2(2 pi e / 3) / 2 = 8.2543 bits/dim (the true entropy
    is 8)."""
    model = initialised(name)
    with torch.no_grad():
        bpd = model.loss(images(64, 16, seed=5), generator=torch.Generator().manual_seed(1))["bpd"]
    analytic = 7 + 0.5 * math.log2(2 * math.pi * math.e / 3)
    assert abs(bpd.mean().item() - analytic) < 0.05


def real_patches(size: int, count_: int) -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    photo = np.asarray(load_sample_images().images[0])  # 427 x 640 x 3 uint8
    patches = [photo[r : r + size, c : c + size] for r in range(0, 400, 48) for c in range(0, 600, 48)]
    return torch.from_numpy(np.stack(patches[:count_])).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("name", TINY)
def test_a_few_dozen_steps_lower_bits_per_dim(name: str) -> None:
    torch.manual_seed(0)
    x = real_patches(16, 64)
    model = build_model(name)
    model.initialize(x)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = model.loss(x, generator=torch.Generator().manual_seed(9))["bpd"].mean().item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(x, generator=gen)["loss"].backward()
        opt.step()
    with torch.no_grad():
        after = model.loss(x, generator=torch.Generator().manual_seed(9))["bpd"].mean().item()
    assert after < before - 0.3, (before, after)


def test_num_samples_averages_elbo_terms() -> None:
    model = initialised("tiny_wolf")
    x = images(4, 16)
    out = model.loss(x, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert out["bpd"].shape == (4,) and out["kl"].shape == (4,)
    assert torch.isfinite(out["loss"])


def test_switch_and_interpolate() -> None:
    model = initialised("tiny_wolf")
    x0, x1 = images(1, 16, seed=7), images(1, 16, seed=8)
    grid = model.interpolate(x0, x1, [0.0, 0.5, 1.0], [0.0, 1.0])
    assert grid.shape == (3, 2, 3, 16, 16) and grid.dtype == torch.uint8
    assert torch.equal(grid[0, 0], x0[0]) and torch.equal(grid[2, 1], x1[0])
    switched = model.switch(x0, x1)
    assert switched.shape == (1, 2, 3, 16, 16)
    assert torch.equal(switched[0, 0], grid[2, 0])  # decode(z1, v0)
    assert torch.equal(switched[0, 1], grid[0, 1])  # decode(z0, v1)


@pytest.mark.parametrize("name", TINY)
def test_sampling(name: str) -> None:
    model = initialised(name)
    s = model.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 3, 16, 16) and s.dtype == torch.uint8
    again = model.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)


def test_batched_weight_statistics_give_the_same_loss() -> None:
    model = initialised("tiny_wolf").double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    z = torch.randn(2, model.z_dim, dtype=torch.float64)
    v1, ld1 = model.flow(x, z)
    with weight_statistics(model):
        v2, ld2 = model.flow(x, z)
    torch.testing.assert_close(v2, v1, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld2, ld1, atol=1e-9, rtol=1e-12)


# -- bad input --------------------------------------------------------------------------------------


def test_wrong_image_shape() -> None:
    model = initialised("tiny_wolf")
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\]"):
        model.loss(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\]"):
        model.loss(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_nan_in_images() -> None:
    model = initialised("tiny_refined_glow")
    x = images(2, 16).float()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.loss(x)


def test_wrong_z_size() -> None:
    model = initialised("tiny_wolf")
    _, v = model.encode(images(2, 16))
    with pytest.raises(ValueError, match=r"\[2, 8\]"):
        model.decode(torch.zeros(2, 5), v)
    with pytest.raises(ValueError, match="no global code"):
        initialised("tiny_glow").decode(torch.zeros(2, 8), v)


def test_image_size_not_divisible_by_levels() -> None:
    data = {
        "kind": "refined_glow",
        "image_size": 20,
        "flow": {"levels": 4, "num_steps": [1, [1, 1], [1, 1], 1], "hidden_channels": [4, 8, 8, 8], "factors": [4, 4]},
    }
    with pytest.raises(ConfigError, match=r"divisible by 2\*\*3 = 8"):
        build_model(data)


def test_unknown_config_key() -> None:
    data = {
        "kind": "glow",
        "image_size": 16,
        "flow": {"levels": 2, "num_steps": [1, 1], "hidden_channels": [4, 4], "hiden": 3},
    }
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['hiden'\] in model.flow"):
        build_model(data)


def test_initialized_flag_travels_with_the_state_dict() -> None:
    model = build_model("tiny_refined_glow")
    assert not model.initialized
    model.initialize(images(8, 16))
    assert model.initialized
    fresh = build_model("tiny_refined_glow")
    fresh.load_state_dict(model.state_dict())
    assert fresh.initialized
