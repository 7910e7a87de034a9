"""A whole refined Glow and a whole Wolf give the same bits/dim, v, decode and parameter gradients
with the fused Triton kernels (``backend="triton"``, run by the interpreter on a CPU-only machine,
compiled on a CUDA device) as with the plain-PyTorch reference ops, in float32 (tolerances stated
per check; looser on a GPU, where reductions and convolution algorithms differ between runs).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fastflow.models import build_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {"bpd": 1e-5, "v": 1e-4, "grad": 1e-4} if DEVICE == "cpu" else {"bpd": 1e-4, "v": 1e-3, "grad": 1e-3}


def images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=gen, dtype=torch.uint8).to(DEVICE)


@pytest.mark.parametrize("name", [pytest.param("tiny_refined_glow", marks=pytest.mark.slow), "tiny_wolf", "tiny_glow"])
def test_triton_backend_matches_cpu(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).to(DEVICE)
    model.initialize(images(16, 0), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # off the identity init so every kernel does real work
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape).to(p.device))
    x = images(3, 1)
    results = {}
    for backend in ("cpu", "triton"):
        model.set_backend(backend)
        model.zero_grad()
        out = model.loss(x, generator=torch.Generator().manual_seed(2))
        out["loss"].backward()
        z, v = model.encode(x)
        results[backend] = {
            "bpd": out["bpd"],
            "v": v,
            "decoded": model.decode(z, v),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        }
    ref, fused = results["cpu"], results["triton"]
    torch.testing.assert_close(fused["bpd"], ref["bpd"], atol=TOL["bpd"], rtol=TOL["bpd"])
    torch.testing.assert_close(fused["v"], ref["v"], atol=TOL["v"], rtol=TOL["v"])
    assert torch.equal(fused["decoded"], ref["decoded"]) and torch.equal(ref["decoded"], x)
    assert fused["grads"].keys() == ref["grads"].keys()
    for key, g in ref["grads"].items():
        scale = g.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(fused["grads"][key] / scale, g / scale, atol=TOL["grad"], rtol=0, msg=key)


def test_memory_efficient_with_triton_backend() -> None:
    torch.manual_seed(0)
    model = build_model("tiny_wolf").to(DEVICE)
    model.initialize(images(16, 0))
    x = images(2, 3)
    grads = {}
    for backend, efficient in (("cpu", False), ("triton", True)):
        model.set_backend(backend)
        model.set_memory_efficient(efficient)
        model.zero_grad()
        model.loss(x, generator=torch.Generator().manual_seed(4))["loss"].backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for key, g in grads["cpu"].items():
        scale = g.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(grads["triton"][key] / scale, g / scale, atol=TOL["grad"], rtol=0, msg=key)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_no_grad_in_place_couplings_change_nothing(monkeypatch, backend: str) -> None:
    """Evaluation and sampling run their couplings in place (no grad); v, the bits/dim and the samples
    are those of the out-of-place run, and the caller's images are left as they were."""
    from fastflow.flows.coupling import AffineCoupling

    torch.manual_seed(0)
    model = build_model("tiny_wolf").to(DEVICE)
    model.initialize(images(16, 0), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape).to(p.device))
    model.set_backend(backend)
    x = images(3, 1)
    x_before = x.clone()
    results = {}
    for in_place in (False, True):
        monkeypatch.setattr(AffineCoupling, "writes_in_place", in_place)
        with torch.no_grad():
            bpd = model.loss(x, generator=torch.Generator().manual_seed(2))["bpd"]
            z, v = model.encode(x)
            samples = model.sample(2, temperature=0.7, generator=torch.Generator().manual_seed(3))
        results[in_place] = (bpd, z, v, samples)
    (bpd, z, v, samples), (bpd_ref, z_ref, v_ref, samples_ref) = results[True], results[False]
    torch.testing.assert_close(bpd, bpd_ref, atol=TOL["bpd"], rtol=TOL["bpd"])
    for got, want in ((z, z_ref), (v, v_ref)):
        torch.testing.assert_close(got, want, atol=TOL["v"], rtol=TOL["v"])
    # uint8 samples: equal on the CPU; a GPU's convolutions may round a pixel the other way
    torch.testing.assert_close(samples.int(), samples_ref.int(), atol=0 if DEVICE == "cpu" else 1, rtol=0)
    assert torch.equal(x, x_before)
