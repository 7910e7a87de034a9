"""``backend="reference"`` (the paper's way of computing the model with plain PyTorch ops, the yardstick
of the speed claims) gives the same loss, v, decode and parameter gradients as the other backends:
float64, every parameter perturbed off its init so every op does real work.
"""

from __future__ import annotations

import pytest
import torch

from fastflow.flows.conv1x1 import ActNormConv1x1, InvertibleMatrix
from fastflow.functional import actnorm_conv1x1, affine_coupling, cond_bias_elu
from fastflow.models import build_model
from fastflow.ops.backends import BACKENDS


def images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=gen, dtype=torch.uint8)


def run(model: torch.nn.Module, backend: str, x: torch.Tensor) -> dict:
    model.set_backend(backend)
    model.zero_grad()
    out = model.loss(x, generator=torch.Generator().manual_seed(2))
    out["loss"].backward()
    z, v = model.encode(x)
    return {
        "bpd": out["bpd"],
        "v": v,
        "decoded": model.decode(z, v),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
    }


def perturbed(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name)
    model.initialize(images(8, 0), generator=torch.Generator().manual_seed(0))
    model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, dtype=p.dtype))
    return model


@pytest.mark.parametrize("name", ["tiny_wolf", pytest.param("tiny_glow", marks=pytest.mark.slow)])
def test_reference_backend_matches_cpu_float64(name: str) -> None:
    model = perturbed(name)
    x = images(2, 1)
    ref, fast = run(model, "reference", x), run(model, "cpu", x)
    torch.testing.assert_close(fast["bpd"], ref["bpd"], atol=1e-11, rtol=1e-11)
    torch.testing.assert_close(fast["v"], ref["v"], atol=1e-10, rtol=1e-10)
    assert torch.equal(ref["decoded"], x) and torch.equal(fast["decoded"], x)
    assert fast["grads"].keys() == ref["grads"].keys() and len(ref["grads"]) == len(list(model.parameters()))
    for key, g in ref["grads"].items():
        scale = g.abs().max().clamp_min(1e-300)
        torch.testing.assert_close(fast["grads"][key] / scale, g / scale, atol=1e-9, rtol=0, msg=key)


def test_reference_backend_reaches_every_layer() -> None:
    """set_backend("reference") reaches the 1x1 convs too, and no extension op runs in that mode."""
    model = perturbed("tiny_wolf")
    model.set_backend("reference")
    layers = [m for m in model.modules() if isinstance(m, (InvertibleMatrix, ActNormConv1x1))]
    assert layers and all(m.backend == "reference" for m in layers)

    def ops_run(backend: str) -> set[str]:
        model.set_backend(backend)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model.loss(images(2, 3))["loss"].backward()
        return {e.key for e in prof.key_averages()}

    assert any(k.startswith("fastflow::") for k in ops_run("cpu"))  # the extension is there to avoid
    names = ops_run("reference")
    assert not any(k.startswith("fastflow::") for k in names), sorted(k for k in names if "fastflow" in k)
    assert {"aten::elu", "aten::cat", "aten::convolution", "aten::linalg_slogdet"} <= names


def test_reference_ops_are_the_plain_formulas() -> None:
    """Each op's reference path against the formula written out here, with different code."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=gen)
    mu = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=gen)
    u = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=gen)
    y, logdet = affine_coupling(x, mu, u, "skip", "down", 1.0, backend="reference")
    s = 2 * torch.sigmoid(u)
    expected = x.clone()
    expected[:, 0::2] = s * x[:, 0::2] + mu
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(logdet, s.log().sum((1, 2, 3)))
    h = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=gen)
    bias = torch.randn(2, 4, dtype=torch.float64, generator=gen)
    pre = h + bias[:, :, None, None]
    torch.testing.assert_close(cond_bias_elu(h, bias, backend="reference"), torch.where(pre > 0, pre, pre.exp() - 1))
    ls, b = torch.randn(4, dtype=torch.float64, generator=gen), torch.randn(4, dtype=torch.float64, generator=gen)
    w = torch.randn(4, 4, dtype=torch.float64, generator=gen)
    out, ld = actnorm_conv1x1(x, ls, b, w, backend="reference")
    torch.testing.assert_close(out, torch.einsum("oc,bchw->bohw", w, x * ls.exp()[:, None, None] + b[:, None, None]))
    torch.testing.assert_close(ld, 9 * (ls.sum() + torch.linalg.det(w).abs().log()).expand(2))


def test_unknown_backend_lists_reference() -> None:
    assert "reference" in BACKENDS
    with pytest.raises(ValueError, match="reference"):
        cond_bias_elu(torch.zeros(1, 2), backend="paper")
