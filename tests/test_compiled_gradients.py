"""``torch.compile`` of the training loss gives eager's loss and every parameter gradient, for each
backend ("reference", "cpu" and "triton"; Triton in the interpreter on a CPU-only machine) and each
model kind (tiny configs), on every torch that fastflow supports (``make test`` and ``make test-oldest``).

The compiler is ``aot_eager``: it traces forward and backward through AOTAutograd (functionalization,
the custom ops' fakes, the autograd Functions' hand-written backwards), which is where a gradient can
be lost, and runs the traced graphs without generating kernels. The parameters are moved off their
initial values first (the last layer of every coupling network starts at zero, which leaves most
gradients zero in both runs), and each gradient is checked to be nonzero in eager, so a gradient that
the compiled run drops or zeroes cannot pass.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fastflow.models import build_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# A compile takes 8-20 s of CPU per model (Triton in the interpreter 20-40 s more), so `make test` runs
# Wolf on the cpu backend (every CPU op of fastflow: the coupling network as one Function, the
# extension's kernels, the packed coupling) and `make test-all` the rest.
SLOW = pytest.mark.slow
CASES = [
    pytest.param(name, backend, marks=[] if (name, backend) == ("tiny_wolf", "cpu") else [SLOW])
    for name in ("tiny_glow", "tiny_refined_glow", "tiny_wolf")
    for backend in ("reference", "cpu", "triton")
]


def perturbed_model(name: str, backend: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(name).to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    model.initialize(torch.randint(0, 256, (8, 3, 16, 16), generator=gen, dtype=torch.uint8).to(DEVICE), generator=gen)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(DEVICE))
    model.set_backend(backend)
    return model, torch.randint(0, 256, (2, 3, 16, 16), generator=gen, dtype=torch.uint8).to(DEVICE)


def loss_and_grads(loss_fn, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss (noise from the global generator: dynamo does not take Generator objects) and the
    gradient of every parameter (None where backward left it unset)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss = loss_fn(x)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name, backend", CASES)
def test_compiled_loss_gives_eager_gradients(name: str, backend: str) -> None:
    torch._dynamo.reset()  # a fresh compile per case (no cache limit reached, no silent eager fallback)
    model, x = perturbed_model(name, backend)
    expected_loss, expected = loss_and_grads(model.loss, model, x)
    loss, grads = loss_and_grads(torch.compile(model.loss, fullgraph=True, backend="aot_eager"), model, x)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for name_, g in expected.items():
        assert g is not None and bool(g.abs().max() > 0), f"{name_}: zero gradient in eager, which proves nothing"
        assert grads[name_] is not None, f"{name_}: no gradient from the compiled loss"
        torch.testing.assert_close(grads[name_], g, rtol=1e-4, atol=1e-6, msg=name_)


def test_compiled_coupling_net_rows_gives_eager_gradients() -> None:
    """The CPU coupling network alone (one autograd Function with a hand-written backward): every input's
    gradient, with a bias and an output bias (torch 2.11's compiler once returned zeros for all six)."""
    from fastflow.ops.cpu.coupling_net import coupling_net_rows

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    shapes = {"x": (2, 3, 5, 5), "w_in": (8, 3, 3, 3), "w_mid": (8, 8), "bias": (2, 8), "w_out": (6, 8, 3, 3)}
    inputs = {n: torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for n, s in shapes.items()}
    inputs["b_out"] = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 6, 5, 5, generator=gen, dtype=torch.float64)

    def loss(x, w_in, w_mid, bias, w_out, b_out):
        return (coupling_net_rows(x, w_in, w_mid, bias, w_out, b_out, padding_in=1) * weights).sum()

    def grads(fn) -> list[torch.Tensor]:
        return list(torch.autograd.grad(fn(**inputs), list(inputs.values())))

    expected = grads(loss)
    for name, g, e in zip(inputs, grads(torch.compile(loss, fullgraph=True, backend="aot_eager")), expected):
        assert bool(e.abs().max() > 0), name
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=name)
