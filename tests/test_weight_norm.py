"""Weight normalisation ``w = g * v / max(||v_o||, 1e-12)`` (fastflow/ops/weight_norm.py): the Triton
kernels against the plain-PyTorch reference (in the interpreter on a machine without a GPU, so shapes
are small), the layers of fastflow.nn on each backend (the backend selection: tests/test_backend.py;
the launches the op saves in a Wolf step: tests/test_kernel_machine_code.py).

Every kernel buffer is poisoned with NaN first, so an element a kernel fails to write shows up as a
mismatch. Each input has a zero row (its norm clamped), a row of norm below the clamp (clamped, yet
v not zero: the norm must get no gradient) and a row of tiny norm above it (not clamped).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_checks import compile_for_gpus, poison_outputs  # noqa: E402

import fastflow.kernels.weight_norm as kernels  # noqa: E402
from fastflow.nn import WeightNormConv2d, WeightNormLinear  # noqa: E402
from fastflow.ops.weight_norm import NORM_EPS, weight_norm, weight_norm_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [(torch.float32, 1e-6, 1e-5), (torch.float64, 1e-12, 1e-12)]
# [O, *rest]: linear, conv, a linear row over two blocks of the kernel's loop (the second partial),
# a conv row over two blocks
SHAPES = [(5, 7), (6, 4, 3, 3), (4, kernels.TILE + 76), (4, 130, 3, 3)]


@pytest.fixture(autouse=True)
def poison_kernel_buffers(monkeypatch):
    poison_outputs(monkeypatch, kernels)


def make_inputs(shape, dtype, special_rows=True, seed=0):
    """v ``[O, *rest]`` (rows 0-2: zero, norm 1e-13 below the clamp, norm ~1e-8 above it) and g ``[O]``
    of both signs, float64 values cast to ``dtype``, requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    if special_rows:
        v[0] = 0
        v[1] *= 1e-13 / v[1].norm()
        v[2] *= 1e-8 / v[2].norm()
    g = 2 * torch.rand(shape[0], generator=gen, dtype=torch.float64) - 1
    return v.to(DEVICE, dtype).requires_grad_(), g.to(DEVICE, dtype).requires_grad_()


def run(fn, v, g, grad_layout="contiguous", seed=1):
    """``fn(v, g)`` and the gradients of v and g for a random gradient of w."""
    w = fn(v, g)
    gen = torch.Generator().manual_seed(seed)
    grad_w = torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w.device, w.dtype)
    if grad_layout == "transposed":  # the same values, stored column-major
        grad_w = grad_w.t().contiguous().t()
    return w, torch.autograd.grad(w, (v, g), grad_w)


def check(v, g, atol, rtol, grad_layout="contiguous"):
    w, grads = run(lambda *t: weight_norm(*t, backend="triton"), v, g, grad_layout)
    w_ref, grads_ref = run(weight_norm_reference, v, g, grad_layout)
    assert w.shape == v.shape and w.dtype == v.dtype
    torch.testing.assert_close(w, w_ref, atol=atol, rtol=rtol)
    for got, want in zip(grads, grads_ref):
        # the clamped rows' gradients of v are dw g / 1e-12: relative to each tensor's largest entry
        scale = want.abs().max()
        torch.testing.assert_close(got / scale, want / scale, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype, atol, rtol):
    check(*make_inputs(shape, dtype), atol, rtol)


def test_special_rows_are_told_apart():
    """The reference on the special rows: the zero row's w is 0 and its grad_v is dw g / 1e-12; the
    row below the clamp has the same grad_v (the clamp passes nothing to the norm); the tiny row
    above the clamp has a grad_v orthogonal to v (the norm's gradient removes v's direction)."""
    v, g = make_inputs((3, 40), torch.float64)
    w, (grad_v, _) = run(lambda *t: weight_norm(*t, backend="triton"), v, g)
    grad_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(w[0], torch.zeros_like(w[0]))
    for row in (0, 1):
        torch.testing.assert_close(grad_v[row], grad_w[row] * g[row].detach() / NORM_EPS, atol=0, rtol=1e-12)
    assert abs(torch.dot(grad_v[2], v[2].detach()).item()) < 1e-12 * grad_v[2].norm().item() * v[2].norm().item()


@pytest.mark.parametrize("layout", ["transposed", "row_sliced", "sliced"])
def test_non_contiguous_inputs(layout):
    """v and the gradient of w of any strides: a transposed matrix, every other row of a taller one
    (both seen by the kernel through their strides), every other column of a wider one (copied)."""
    v, g = make_inputs((6, 9), torch.float64)
    v = v.detach()
    if layout == "transposed":
        v = v.t().contiguous().t()
    elif layout == "row_sliced":
        v = torch.stack([v, torch.full_like(v, float("nan"))], dim=1).flatten(0, 1)[::2]
    else:
        v = torch.stack([v, torch.full_like(v, float("nan"))], dim=2).flatten(1)[:, ::2]
    assert not v.is_contiguous()
    check(v.requires_grad_(), g, 1e-12, 1e-12, grad_layout="transposed")


def test_low_precision_computes_in_float32():
    """bfloat16 v and g give bfloat16 results equal to float32 maths on the same values, rounded once."""
    v, g = make_inputs((4, 3, 3, 3), torch.bfloat16, special_rows=False)
    w, grads = run(lambda *t: weight_norm(*t, backend="triton"), v, g)
    assert w.dtype == torch.bfloat16 and [t.dtype for t in grads] == [torch.bfloat16] * 2
    wide = [t.detach().float().requires_grad_() for t in (v, g)]
    w_ref, grads_ref = run(weight_norm_reference, *wide)
    torch.testing.assert_close(w.float(), w_ref.bfloat16().float(), atol=0, rtol=8e-3)  # one bfloat16 ulp
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got.float(), want, atol=1e-2 * want.abs().max().item(), rtol=8e-3)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 2, 2)])
def test_gradcheck_float64(shape):
    v, g = make_inputs(shape, torch.float64, special_rows=False)
    assert torch.autograd.gradcheck(lambda *t: weight_norm(*t, backend="triton"), (v, g), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (3, 0, 3, 3)])
def test_empty_inputs(shape):
    """No rows; rows of no elements (norm 0, clamped: w empty, grad_g 0)."""
    v, g = make_inputs(shape, torch.float32, special_rows=False)
    w, (grad_v, grad_g) = run(lambda *t: weight_norm(*t, backend="triton"), v, g)
    assert w.shape == v.shape and grad_v.shape == v.shape
    assert torch.equal(grad_g, torch.zeros_like(g))


@pytest.mark.parametrize(
    "v_shape, g_shape, dtype, message",
    [
        ((4,), (4,), torch.float32, "at least 2 dimensions"),
        ((4, 3), (3,), torch.float32, r"g must have shape \(4,\)"),
        ((4, 3), (4,), torch.float64, "share device and dtype"),
    ],
)
def test_bad_input_raises(v_shape, g_shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        weight_norm(torch.ones(v_shape), torch.ones(g_shape, dtype=dtype), backend="triton")


@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_layers_run_the_op_with_their_backend(layer):
    """The layers of fastflow.nn give the reference's output and gradients on the Triton backend
    (one autograd node for the weight), and keep their parameter names."""
    torch.manual_seed(0)
    module = WeightNormConv2d(3, 4, 3, padding=1) if layer == "conv" else WeightNormLinear(5, 4)
    module = module.to(DEVICE)
    with torch.no_grad():
        module.g.uniform_(-1, 1)
    x = torch.randn(2, 3, 5, 5) if layer == "conv" else torch.randn(2, 5)
    results = {}
    for backend in ("reference", "triton"):
        module.backend = backend
        module.zero_grad()
        out = module(x.to(DEVICE))
        out.square().sum().backward()
        results[backend] = out, [p.grad.clone() for p in module.parameters()]
    assert type(module.weight().grad_fn).__name__ == "WeightNormFunctionBackward"
    torch.testing.assert_close(results["triton"][0], results["reference"][0], atol=1e-6, rtol=1e-5)
    for got, want in zip(results["triton"][1], results["reference"][1]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert list(module.state_dict()) == ["v", "g", "bias"]


def test_kernels_compile_for_a_gpu():
    variants = []
    for dtype, acc in (("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")):
        types = {n: f"*{dtype}" for n in ("V", "G", "W", "DW", "DV", "DG")}
        constexprs = dict(EPS=NORM_EPS, ACC=f"tl.float{acc[2:]}", BLOCK=kernels.TILE)
        variants += [
            (name, types, constexprs) for name in ("_weight_norm_forward_kernel", "_weight_norm_backward_kernel")
        ]
    compile_for_gpus("fastflow.kernels.weight_norm", variants)
