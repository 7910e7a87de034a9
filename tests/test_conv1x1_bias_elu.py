"""Fused ``elu(conv1x1(h) + bias)`` (the coupling network's middle) against the plain-PyTorch reference:
the Triton kernels (interpreter on a CPU-only machine, tiny shapes), the cpu and reference backends.

Every Triton kernel buffer is poisoned with NaN first, so an element a kernel fails to write shows up
as a mismatch. Shapes cover several tiles in every GEMM dimension (channels and pixels not multiples
of the tiles, more than one reduction chunk) and the tl.dot minimum tile of 16 with fewer channels.
"""

import pytest
import torch

pytest.importorskip("triton")

from kernel_checks import compile_for_gpus, poison_outputs, random_layout  # noqa: E402

import fastflow.kernels.conv1x1_bias_elu as kernels  # noqa: E402
from fastflow.ops.conv1x1_bias_elu import conv1x1_bias_elu, conv1x1_bias_elu_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# float32 dots are TF32 on a GPU when torch's convolutions are (docs/numerics.md), IEEE otherwise
FP32_TOL = 5e-3 if DEVICE == "cuda" and kernels._common.conv_dot_precision(torch.float32) == "tf32" else 1e-5
DTYPES = [(torch.float32, FP32_TOL, FP32_TOL), (torch.float64, 1e-12, 1e-12)]
# (B, C_in, C_out, H, W): small, C_out over two 64-tiles, C_in over two 32-tiles, pixels over 64
SHAPES = [(2, 5, 3, 3, 3), (1, 40, 70, 2, 3), (2, 33, 17, 9, 9)]


@pytest.fixture(autouse=True)
def poison_kernel_buffers(monkeypatch):
    poison_outputs(monkeypatch, kernels)


def make_inputs(shape, dtype=torch.float32, with_bias=True, layout="contiguous", seed=0, device=DEVICE):
    """h ``[B, C_in, H, W]``, weight ``[C_out, C_in]`` scaled so that the pre-activation spreads over
    both ELU branches, bias ``[B, C_out]``; all requiring grad. ``"strided"``: h channels-last, weight
    transposed storage and bias a column slice; ``"sliced"``: h ``[..., ::2]``."""
    batch, c_in, c_out, height, width = shape
    gen = torch.Generator().manual_seed(seed)
    h = random_layout((batch, c_in, height, width), layout, gen)
    weight = torch.randn(c_in, c_out, generator=gen, dtype=torch.float64).t() * (2 / max(c_in, 1) ** 0.5)
    bias = torch.randn(batch, 2 * c_out, generator=gen, dtype=torch.float64)[:, ::2]
    if layout != "strided":
        weight, bias = weight.contiguous(), bias.contiguous()
    h, weight = h.to(device, dtype).requires_grad_(), weight.to(device, dtype).requires_grad_()
    bias = bias.to(device, dtype).requires_grad_() if with_bias else None
    return h, weight, bias


def run(fn, *inputs, seed=1):
    """Output of ``fn(*inputs)`` and the gradients of a random linear loss of it."""
    out = fn(*inputs)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
    live = [t for t in inputs if t is not None]
    return out, torch.autograd.grad((out.double() * w).sum(), live)


def check(inputs, atol, rtol, backend="triton"):
    out, grads = run(lambda *t: conv1x1_bias_elu(*t, backend=backend), *inputs)
    out_ref, grads_ref = run(conv1x1_bias_elu_reference, *inputs)
    assert out.dtype == inputs[0].dtype and out.shape == out_ref.shape
    torch.testing.assert_close(out, out_ref, atol=atol, rtol=rtol)
    for got, want in zip(grads, grads_ref):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=atol * (1 + want.abs().max().item()), rtol=rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference(shape, with_bias, dtype, atol, rtol):
    check(make_inputs(shape, dtype, with_bias), atol, rtol)


def test_bias_in_its_own_dtype():
    """A bias of another dtype than h (FC(z) kept in float32 under autocast) is added in the float32
    accumulator as it is, and its gradient comes back in its own dtype."""
    h, weight, bias = make_inputs((2, 6, 5, 3, 4))
    bias64 = bias.detach().double().requires_grad_()
    out, grads = run(lambda *t: conv1x1_bias_elu(*t, backend="triton"), h, weight, bias64)
    out_ref, grads_ref = run(conv1x1_bias_elu_reference, h, weight, bias)
    assert out.dtype == torch.float32 and grads[2].dtype == torch.float64
    torch.testing.assert_close(out, out_ref, atol=FP32_TOL, rtol=FP32_TOL)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(
            got, want.to(got.dtype), atol=FP32_TOL * (1 + want.abs().max().item()), rtol=FP32_TOL
        )


@pytest.mark.parametrize("layout", ["strided", "sliced"])
def test_non_contiguous_inputs(layout):
    check(make_inputs((2, 6, 5, 3, 4), layout=layout), FP32_TOL, FP32_TOL)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_other_backends_match_reference(backend, dtype, atol, rtol):
    check(make_inputs((2, 6, 5, 3, 4), dtype), atol, rtol, backend=backend)


def test_reference_is_the_formula():
    """The reference against the GEMM written out with einsum (independent code)."""
    h, weight, bias = make_inputs((2, 4, 3, 3, 2), torch.float64, device="cpu")
    pre = torch.einsum("ok,bkhw->bohw", weight, h) + bias[:, :, None, None]
    torch.testing.assert_close(conv1x1_bias_elu_reference(h, weight, bias), torch.where(pre > 0, pre, pre.expm1()))


def test_weight_gradient_split_into_chunks_is_the_same():
    """grad_weight with one chunk and with one chunk per item give the same sum."""
    h, weight, _ = make_inputs((3, 6, 5, 5, 5), torch.float64)
    out = conv1x1_bias_elu(h, weight, backend="triton").detach().flatten(2)
    grad = torch.randn_like(out)
    one = kernels.grad_weight(out, grad, h.detach().flatten(2), splits=1)
    many = kernels.grad_weight(out, grad, h.detach().flatten(2), splits=1000)
    torch.testing.assert_close(one, many, atol=1e-12, rtol=1e-12)


def test_extreme_values_stay_finite():
    """Pre-activations from -1e30 to 1e30: ELU saturates at -1 with zero slope, no inf or NaN."""
    h = torch.tensor([-1e30, -80.0, 0.0, 80.0, 1e30], device=DEVICE).view(1, 1, 1, 5).requires_grad_()
    weight = torch.ones(2, 1, device=DEVICE).requires_grad_()
    bias = torch.zeros(1, 2, device=DEVICE).requires_grad_()
    out, grads = run(lambda *t: conv1x1_bias_elu(*t, backend="triton"), h, weight, bias)
    out_ref, grads_ref = run(conv1x1_bias_elu_reference, h, weight, bias)
    torch.testing.assert_close(out, out_ref, atol=0, rtol=1e-6)
    # elu' from the output (out + 1) rounds exp(-80) to 0: an absolute error of 2e-35
    torch.testing.assert_close(grads[0], grads_ref[0], atol=1e-30, rtol=1e-6)
    assert torch.isfinite(grads[2]).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_float64(with_bias):
    h, weight, bias = make_inputs((2, 3, 4, 2, 2), torch.float64, with_bias)
    inputs = (h, weight, bias) if with_bias else (h, weight)
    for backend in ("triton", "cpu"):
        assert torch.autograd.gradcheck(
            lambda *t, b=backend: conv1x1_bias_elu(*t, backend=b), inputs, eps=1e-6, atol=1e-7
        )


def test_only_the_asked_gradients():
    """Frozen weight or bias: the others still come back right (and the frozen ones stay None)."""
    h, weight, bias = make_inputs((2, 5, 3, 3, 3))
    weight.requires_grad_(False)
    out, (gh, gb) = run(lambda h, b: conv1x1_bias_elu(h, weight, b, backend="triton"), h, bias)
    _, (gh_ref, gb_ref) = run(lambda h, b: conv1x1_bias_elu_reference(h, weight, b), h, bias)
    torch.testing.assert_close(gh, gh_ref, atol=FP32_TOL, rtol=FP32_TOL)
    torch.testing.assert_close(gb, gb_ref, atol=FP32_TOL, rtol=FP32_TOL)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3, 3), (2, 4, 3, 0, 3)])
def test_empty_inputs(shape):
    h, weight, bias = make_inputs(shape)
    out = conv1x1_bias_elu(h, weight, bias, backend="triton")
    assert out.shape == (shape[0], shape[2], shape[3], shape[4])
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and torch.equal(bias.grad, torch.zeros_like(bias))
    assert h.grad.shape == h.shape


@pytest.mark.parametrize(
    "h_shape, w_shape, bias_shape, backend, message",
    [
        ((2, 4, 3), (5, 4), None, "triton", r"h must have shape \[B, C_in, H, W\]"),
        ((2, 4, 3, 3), (5, 3), None, "triton", r"weight must have shape \[C_out, 4\]"),
        ((2, 4, 3, 3), (5, 4), (2, 4), "cpu", r"bias must have shape \(2, 5\)"),
        ((2, 4, 3, 3), (5, 4), None, "fused", "unknown backend"),
    ],
)
def test_bad_input_raises(h_shape, w_shape, bias_shape, backend, message):
    bias = None if bias_shape is None else torch.zeros(bias_shape, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        conv1x1_bias_elu(torch.zeros(h_shape, device=DEVICE), torch.zeros(w_shape, device=DEVICE), bias, backend)


def test_kernels_compile_for_a_gpu():
    """The three kernels for sm_90: float32, and bfloat16 operands with float32 accumulation."""
    variants = []
    for dtype, acc in (("fp32", "fp32"), ("bf16", "fp32")):
        types = {n: f"*{dtype}" for n in ("H", "OUT", "DOUT", "DH", "W")}
        types |= {"BIAS": f"*{dtype}", "DBIAS_PART": f"*{acc}", "DW_PART": f"*{acc}"}
        common = dict(ACC=f"tl.float{acc[2:]}", DOT=f"tl.{'bfloat16' if dtype == 'bf16' else 'float' + acc[2:]}")
        common |= dict(PRECISION="ieee")
        variants += [
            ("_forward_kernel", types, common | dict(HAS_BIAS=True, BLOCK_O=64, BLOCK_K=32, BLOCK_P=64)),
            ("_grad_input_kernel", types, common | dict(BIAS_GRAD=True, BLOCK_K=64, BLOCK_O=32, BLOCK_P=64)),
            ("_grad_weight_kernel", types, common | dict(BLOCK_O=64, BLOCK_K=64, BLOCK_P=64)),
        ]
    compile_for_gpus("fastflow.kernels.conv1x1_bias_elu", variants)
