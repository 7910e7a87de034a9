"""fastflow.integrations.normflows.fuse on a small normflows multi-scale Glow (its Glow example at tiny
sizes): the fused model gives the same log_prob, the same gradient for every parameter (the very same
Parameter objects) and the same samples from the same noise, and state dicts move both ways.

Tolerances: float64 1e-10 relative (the fused ops reorder sums and fold the actnorm into the matrix);
float32 2e-5 relative on log_prob and samples, gradients 1e-4 of each parameter's largest gradient.
"""

from __future__ import annotations

import pytest
import torch

nf = pytest.importorskip("normflows")

from fastflow.integrations.normflows import FusedGlowBlock, fuse, fusion_report  # noqa: E402


def glow(seed: int, use_lu: bool = True, scale_map: str = "sigmoid", split_mode: str = "channel", dtype=torch.float64):
    """normflows' Glow example (L levels of K GlowBlocks, Squeeze, Merge), 3x8x8 images, tiny widths."""
    torch.manual_seed(seed)
    levels, steps, hidden, shape = 2, 2, 8, (3, 8, 8)
    q0, merges, flows = [], [], []
    for i in range(levels):
        level = [
            nf.flows.GlowBlock(
                shape[0] * 2 ** (levels + 1 - i),
                hidden,
                split_mode=split_mode,
                scale=scale_map != "additive",
                scale_map=scale_map if scale_map != "additive" else "exp",
                use_lu=use_lu,
            )
            for _ in range(steps)
        ]
        flows.append(level + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (shape[0] * 2 ** (levels - i), shape[1] // 2 ** (levels - i), shape[2] // 2 ** (levels - i))
        else:
            latent = (shape[0] * 2 ** (levels + 1), shape[1] // 2**levels, shape[2] // 2**levels)
        q0.append(nf.distributions.DiagGaussian(latent))
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False).to(dtype)
    data = torch.rand(16, *shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.log_prob(data, None)  # normflows' data-dependent ActNorm init
        gen = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():  # off the zero-init couplings, so every term does real work
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype))
    return model


def batch(dtype, seed=5):
    return torch.rand(4, 3, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def log_prob_and_grads(model, x):
    model.zero_grad()
    lp = model.log_prob(x, None)
    (-lp.mean()).backward()
    return lp.detach(), {p: p.grad.clone() for p in model.parameters() if p.grad is not None}


def samples(model, seed=7):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.sample(3)


CASES = [
    ("sigmoid", True, "channel"),
    ("sigmoid_inv", False, "channel_inv"),
    ("exp", True, "channel_inv"),
    ("additive", False, "channel"),
]


@pytest.mark.parametrize("dtype, rtol, gtol", [(torch.float64, 1e-10, 1e-10), (torch.float32, 2e-5, 1e-4)])
@pytest.mark.parametrize("scale_map, use_lu, split_mode", CASES)
def test_fused_glow_matches_normflows(scale_map, use_lu, split_mode, dtype, rtol, gtol):
    model = glow(0, use_lu, scale_map, split_mode, dtype)
    x = batch(dtype)
    params_before = {id(p) for p in model.parameters()}
    lp_ref, grads_ref = log_prob_and_grads(model, x)
    z_ref, lq_ref = samples(model)

    fuse(model)
    blocks = [m for m in model.modules() if isinstance(m, FusedGlowBlock)]
    assert len(blocks) == 4 and not any(isinstance(m, nf.flows.GlowBlock) for m in model.modules())
    assert all(len(b.replaced) == 2 for b in blocks), fusion_report(model)
    assert {id(p) for p in model.parameters()} == params_before

    lp, grads = log_prob_and_grads(model, x)
    torch.testing.assert_close(lp, lp_ref, rtol=rtol, atol=0)
    assert grads.keys() == grads_ref.keys()
    for p, g in grads_ref.items():
        scale = g.abs().max().clamp_min(1e-30)
        torch.testing.assert_close(grads[p] / scale, g / scale, rtol=0, atol=gtol)
    z, lq = samples(model)
    torch.testing.assert_close(z, z_ref, rtol=rtol, atol=rtol)
    torch.testing.assert_close(lq, lq_ref, rtol=rtol, atol=0)


def test_state_dict_moves_between_fused_and_unfused():
    fused = fuse(glow(0))
    plain = glow(1)
    x = batch(torch.float64)
    sd = fused.state_dict()
    assert sd.keys() == plain.state_dict().keys()
    plain.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(plain.log_prob(x, None), fused.log_prob(x, None), rtol=1e-10, atol=0)
        other = glow(2)
        fused.load_state_dict(other.state_dict())
        torch.testing.assert_close(fused.log_prob(x, None), other.log_prob(x, None), rtol=1e-10, atol=0)


def test_uninitialised_actnorm_uses_normflows_init():
    """fuse before the first batch: the first call runs normflows' data-dependent init."""
    torch.manual_seed(0)
    make = lambda: nf.flows.GlowBlock(8, 6, use_lu=True).double()  # noqa: E731
    torch.manual_seed(3)
    plain = make()
    torch.manual_seed(3)
    fused = FusedGlowBlock(make())
    x = torch.randn(5, 8, 4, 4, dtype=torch.float64)
    z_ref, ld_ref = plain.inverse(x)
    z, ld = fused.inverse(x)
    torch.testing.assert_close(z, z_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ld, ld_ref, rtol=1e-10, atol=0)
    assert fused.actnorm_conv.actnorm.data_dep_init_done > 0


def test_checkerboard_coupling_is_kept():
    block = FusedGlowBlock(nf.flows.GlowBlock(4, 6, split_mode="checkerboard").double())
    assert isinstance(block.coupling, nf.flows.AffineCouplingBlock)
    assert len(block.replaced) == 1
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    z, ld = block.inverse(x)
    x_back, ld_back = block(z)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld_back, -ld, rtol=1e-10, atol=1e-10)


def test_triton_backend_matches_normflows():
    """The fused modules on the Triton kernels (the interpreter here) against normflows, float64."""
    pytest.importorskip("triton")
    model = glow(0)
    x = batch(torch.float64)[:2]
    lp_ref, grads_ref = log_prob_and_grads(model, x)
    fuse(model)
    for m in model.modules():
        if hasattr(m, "backend"):
            m.backend = "triton"
    lp, grads = log_prob_and_grads(model, x)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-10, atol=0)
    for p, g in grads_ref.items():
        scale = g.abs().max().clamp_min(1e-30)
        torch.testing.assert_close(grads[p] / scale, g / scale, rtol=0, atol=1e-10)
