"""Fused ELU(h + per-(sample, channel) bias) against the plain-PyTorch reference: the Triton kernels
and the C++ CPU kernels of the extension (what ``backend="cpu"`` runs on CPU tensors).

On a machine without a GPU the Triton kernels run in the Triton interpreter (tests/conftest.py), so
shapes are tiny. Every Triton kernel buffer is poisoned with NaN first, so an element a kernel fails
to write shows up as a mismatch.
"""

import math

import pytest
import torch

pytest.importorskip("triton")

from kernel_checks import compile_for_gpus, poison_outputs, random_layout  # noqa: E402

import fastflow.kernels.cond_bias_elu as kernels  # noqa: E402
import fastflow.ops.cpu.cond_bias_elu as cpu_elu  # noqa: E402
from fastflow.ops.cond_bias_elu import cond_bias_elu, cond_bias_elu_reference  # noqa: E402
from fastflow.ops.cpu.cond_bias_elu import elu_backward_from_output  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [(torch.float32, 1e-6, 1e-5), (torch.float64, 1e-12, 1e-12)]
LOW_PRECISION = [(torch.float16, 2e-3, 2e-3), (torch.bfloat16, 2e-2, 2e-2)]
# [B, Hd, *S]: images, vectors, one sample with several channel tiles, planes over one pixel tile
SHAPES = [(2, 5, 3, 3), (3, 7), (1, 40, 9, 9), (2, 3, 33, 33)]


@pytest.fixture(autouse=True)
def poison_kernel_buffers(monkeypatch):
    poison_outputs(monkeypatch, kernels)


def make_inputs(shape, dtype=torch.float32, with_bias=True, layout="contiguous", seed=0, device=DEVICE):
    """h (spread over both ELU branches) and bias ``[B, Hd]``, requiring grad.

    ``"strided"``: h channels-last and bias a ``[:, ::2]`` column slice; ``"sliced"``: h ``[..., ::2]``.
    """
    gen = torch.Generator().manual_seed(seed)
    h = random_layout(shape, layout, gen)
    bias = torch.randn(shape[0], 2 * shape[1], generator=gen, dtype=torch.float64)[:, ::2]
    bias = bias if layout == "strided" else bias.contiguous()
    h = (2 * h).to(device, dtype).requires_grad_()
    bias = bias.to(device, dtype).requires_grad_() if with_bias else None
    return h, bias


def run(fn, h, bias, seed=1):
    """Output of ``fn(h, bias)`` and the gradients of a random linear loss of it."""
    out = fn(h, bias)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
    live = [t for t in (h, bias) if t is not None]
    return out, torch.autograd.grad((out.double() * w).sum(), live)


def check(h, bias, atol, rtol, backend="triton"):
    out, grads = run(lambda *t: cond_bias_elu(*t, backend=backend), h, bias)
    out_ref, grads_ref = run(cond_bias_elu_reference, h, bias)
    torch.testing.assert_close(out, out_ref, atol=atol, rtol=rtol)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, with_bias, dtype, atol, rtol):
    check(*make_inputs(shape, dtype, with_bias), atol, rtol)


@pytest.mark.parametrize("layout", ["strided", "sliced"])
def test_non_contiguous_inputs(layout):
    check(*make_inputs((2, 6, 3, 4), layout=layout), 1e-6, 1e-5)


@pytest.mark.parametrize("dtype, atol, rtol", LOW_PRECISION)
def test_low_precision_computes_in_float32(dtype, atol, rtol):
    """Half h and bias give half results equal to float32 math on the same values."""
    h, bias = make_inputs((2, 6, 4, 4), dtype)
    out, grads = run(lambda *t: cond_bias_elu(*t, backend="triton"), h, bias)
    assert out.dtype == dtype and [g.dtype for g in grads] == [dtype, dtype]
    wide = [t.detach().float().requires_grad_() for t in (h, bias)]
    out_ref, grads_ref = run(cond_bias_elu_reference, *wide)
    torch.testing.assert_close(out, out_ref.to(dtype), atol=atol, rtol=rtol)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got.float(), want, atol=atol * (1 + want.abs().max().item()), rtol=rtol)


def test_extreme_values_stay_finite():
    h = torch.tensor([[[-1e30, -80.0, 0.0, 80.0, 1e30]]], device=DEVICE, requires_grad=True)
    bias = torch.zeros(1, 1, device=DEVICE, requires_grad=True)
    check(h, bias, 1e-6, 1e-6)


@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_float64(with_bias):
    """Both backends against finite differences, in float64."""
    h, bias = make_inputs((2, 3, 2, 2), torch.float64, with_bias)
    inputs = (h, bias) if with_bias else (h,)
    for backend in ("cpu", "triton"):

        def fn(*t, backend=backend):
            return cond_bias_elu(*t, backend=backend)

        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0, 3)])
def test_empty_inputs(shape):
    h, bias = make_inputs(shape)
    out = cond_bias_elu(h, bias, backend="triton")
    assert out.shape == h.shape
    out.sum().backward()
    assert h.grad.shape == h.shape and torch.equal(bias.grad, torch.zeros_like(bias))


@pytest.mark.parametrize(
    "h_shape, bias_shape, backend, message",
    [
        ((2, 4, 3, 3), (2, 3), "triton", r"bias must have shape \(2, 4\)"),
        ((2, 4, 3, 3), (4,), "triton", "bias must have shape"),
        ((4,), (4,), "triton", r"h must have shape \[B, Hd"),
        ((2, 4, 3, 3), (2, 4), "fused", "unknown backend"),
    ],
)
def test_bad_input_raises(h_shape, bias_shape, backend, message):
    with pytest.raises(ValueError, match=message):
        cond_bias_elu(torch.zeros(h_shape, device=DEVICE), torch.zeros(bias_shape, device=DEVICE), backend=backend)


def test_kernels_compile_for_a_gpu():
    """Both kernels, float32/bfloat16/float64, with and without bias, vector and image tiles."""
    variants = []
    for dtype, acc in (("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")):
        types = {n: f"*{dtype}" for n in ("H", "BIAS", "OUT", "DOUT", "DH")} | {"DBIAS_PART": f"*{acc}"}
        for has_bias, tiles in ((True, (512, 1)), (False, (64, 16))):
            constexprs = dict(HAS_BIAS=has_bias, ACC=f"tl.float{acc[2:]}", BLOCK_C=tiles[0], BLOCK_P=tiles[1])
            variants += [
                (name, types, constexprs)
                for name in ("_cond_bias_elu_forward_kernel", "_cond_bias_elu_backward_kernel")
            ]
    compile_for_gpus("fastflow.kernels.cond_bias_elu", variants)


# ---- the C++ CPU kernels (csrc/cond_bias_elu.cpp) ----

needs_cpu_kernels = pytest.mark.skipif(not cpu_elu.kernels_loaded(), reason="the C++ extension is not built")


@needs_cpu_kernels
def test_cpu_backend_runs_the_cpu_kernels():
    h, bias = make_inputs((2, 4, 3, 3), device="cpu")
    assert type(cond_bias_elu(h, bias, backend="cpu").grad_fn).__name__ == "CondBiasEluFunctionBackward"
    half = [t.detach().half().requires_grad_() for t in (h, bias)]  # float16: the reference
    assert "Elu" in type(cond_bias_elu(*half, backend="cpu").grad_fn).__name__


@needs_cpu_kernels
def test_cpu_kernels_bfloat16_compute_in_float32():
    """bfloat16 h and bias (autocast's conv outputs) give bfloat16 results equal to float32 math on
    the same values, rounded once (to one bfloat16 ulp: the two expm1s may round differently)."""
    h, bias = make_inputs((2, 6, 5, 7), torch.bfloat16, device="cpu")
    out, grads = run(lambda *t: cond_bias_elu(*t, backend="cpu"), h, bias)
    assert out.dtype == torch.bfloat16 and [g.dtype for g in grads] == [torch.bfloat16, torch.bfloat16]
    wide = [t.detach().float().requires_grad_() for t in (h, bias)]
    out_ref, grads_ref = run(cond_bias_elu_reference, *wide)
    torch.testing.assert_close(out.float(), out_ref.bfloat16().float(), atol=1e-2, rtol=8e-3)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got.float(), want, atol=1e-2 * (1 + want.abs().max().item()), rtol=8e-3)


@needs_cpu_kernels
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES + [(2, 3, 40, 41)])
def test_cpu_kernels_match_reference(shape, with_bias, dtype, atol, rtol):
    check(*make_inputs(shape, dtype, with_bias, device="cpu"), atol, rtol, backend="cpu")


@needs_cpu_kernels
@pytest.mark.parametrize("layout", ["strided", "sliced"])
def test_cpu_kernels_non_contiguous_inputs(layout):
    check(*make_inputs((2, 6, 3, 4), layout=layout, device="cpu"), 1e-6, 1e-5, backend="cpu")


@needs_cpu_kernels
def test_cpu_expm1_within_two_float32_ulps():
    """float32 ELU of the CPU kernel against float64 expm1 over [-100, 5] and tiny negatives (the
    Taylor branch near 0, the exp branch below -0.35, the switch between them, the -1 plateau)."""
    x = torch.cat(
        [-torch.logspace(-30, 2, 200_000, dtype=torch.float64), torch.linspace(-100, 5, 200_001, dtype=torch.float64)]
    ).float()
    out = cond_bias_elu(x.view(1, 1, -1), backend="cpu").view(-1).double()
    truth = torch.where(x > 0, x.double(), torch.expm1(x.double()))
    ulp = (torch.nextafter(truth.float().abs(), torch.tensor(math.inf)) - truth.float().abs()).double()
    assert ((out - truth).abs() / ulp).max().item() <= 2.0


@needs_cpu_kernels
def test_cpu_kernels_extreme_values_and_gradcheck():
    h = torch.tensor([[[-1e30, -80.0, 0.0, 80.0, 1e30]]], requires_grad=True)
    check(h, torch.zeros(1, 1, requires_grad=True), 1e-6, 1e-6, backend="cpu")
    h, bias = make_inputs((2, 3, 2, 2), torch.float64, device="cpu")
    assert torch.autograd.gradcheck(lambda *t: cond_bias_elu(*t, backend="cpu"), (h, bias), eps=1e-6, atol=1e-7)


@needs_cpu_kernels
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0, 3)])
def test_cpu_kernels_empty_inputs(shape):
    h, bias = make_inputs(shape, device="cpu")
    out = cond_bias_elu(h, bias, backend="cpu")
    out.sum().backward()
    assert out.shape == h.shape and torch.equal(bias.grad, torch.zeros_like(bias))


@needs_cpu_kernels
def test_cpu_raw_op_bad_input():
    with pytest.raises(ValueError, match=r"h of shape \[B, C, P\] stored as planes .* or rows"):
        torch.ops.fastflow.cond_bias_elu(torch.zeros(2, 3), None)
    with pytest.raises(ValueError, match=r"stored as planes"):
        torch.ops.fastflow.cond_bias_elu(torch.zeros(2, 3, 8)[..., ::2], None)
    rows = torch.zeros(2, 4, 3).transpose(1, 2)
    with pytest.raises(ValueError, match="grad_out stored like out"):
        torch.ops.fastflow.cond_bias_elu_backward(rows, rows.contiguous(), True)
    with pytest.raises(ValueError, match=r"bias \[B, C\] = \[2, 3\]"):
        torch.ops.fastflow.cond_bias_elu(torch.zeros(2, 3, 4), torch.zeros(3))
    with pytest.raises(TypeError, match="float32, float64 or bfloat16"):
        torch.ops.fastflow.cond_bias_elu(torch.zeros(2, 3, 4, dtype=torch.int32), None)


@needs_cpu_kernels
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3])  # fewer samples than threads (channel blocks), more (whole rows)
def test_cpu_kernels_rows_layout(batch, with_bias, dtype, atol, rtol, poisoned_empty):
    """A channels-last h (the coupling network's rows) stays channels-last through forward and
    backward, with the reference's values: 70 channels are two blocks of the rows bias gradient."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        h, bias = make_inputs((batch, 70, 5, 6), dtype, with_bias, device="cpu")
        h = h.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        out = cond_bias_elu(h, bias, backend="cpu")
        grad_out = torch.randn(out.shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
        grads = torch.autograd.grad(out, [t for t in (h, bias) if t is not None], grad_out)
    finally:
        torch.set_num_threads(threads)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert grads[0].is_contiguous(memory_format=torch.channels_last)
    out_ref = cond_bias_elu_reference(h, bias)
    grads_ref = torch.autograd.grad(out_ref, [t for t in (h, bias) if t is not None], grad_out)
    torch.testing.assert_close(out, out_ref, atol=atol, rtol=rtol)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@needs_cpu_kernels
def test_cpu_kernels_rows_layout_gradcheck():
    h, bias = make_inputs((2, 3, 2, 3), torch.float64, device="cpu")
    h = h.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: cond_bias_elu(*t, backend="cpu"), (h, bias), eps=1e-6, atol=1e-7)


@needs_cpu_kernels
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
def test_cpu_kernels_reuse_input(with_bias, channels_last, dtype, atol, rtol):
    """reuse_input=True writes the result over h (h is returned, in its layout) with the reference's
    values and gradients, where h is a fresh intermediate (as a GEMM's output is)."""
    h, bias = make_inputs((2, 70, 5, 6), dtype, with_bias, device="cpu")
    if channels_last:
        h = h.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    live = [t for t in (h, bias) if t is not None]
    grad_out = torch.randn(h.shape, dtype=dtype)
    pre = h * 1  # an intermediate the op may overwrite
    out = cond_bias_elu(pre, bias, backend="cpu", reuse_input=True)
    assert out is pre and out.stride() == h.stride()
    grads = torch.autograd.grad(out, live, grad_out)
    out_ref = cond_bias_elu_reference(h, bias)
    grads_ref = torch.autograd.grad(out_ref, live, grad_out)
    torch.testing.assert_close(out, out_ref, atol=atol, rtol=rtol)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@needs_cpu_kernels
def test_cpu_kernels_reuse_input_refused_where_h_is_still_needed():
    """Overwriting an h that another op saved for its backward is caught by autograd, not computed
    wrong: here ``pre * pre`` saved pre."""
    h, _ = make_inputs((2, 3, 4, 4), torch.float64, device="cpu")
    pre = h * 1
    square = pre * pre
    out = cond_bias_elu(pre, None, backend="cpu", reuse_input=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (out.sum() + square.sum()).backward()
    strided = (h * 1)[:, :, ::2]  # not stored as planes or rows: computed out of place
    assert cond_bias_elu(strided, None, backend="cpu", reuse_input=True) is not strided


@pytest.mark.parametrize("extension", [True, False])
@pytest.mark.parametrize("bias_grad", [True, False])
@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_from_output_reusing_the_gradient(monkeypatch, dtype, rows, bias_grad, extension):
    """elu_backward_from_output(..., reuse_grad=True) writes grad_h over a gradient stored as out is
    (the coupling network's GEMM output) with the same values as out of place, in the extension's
    in-place kernel and in torch's fallback; a gradient stored otherwise is left as it was."""
    if extension and not cpu_elu.kernels_loaded():
        pytest.skip("the C++ extension is not built")
    monkeypatch.setattr(cpu_elu, "kernels_loaded", lambda: extension)
    gen = torch.Generator().manual_seed(0)

    def stored(t: torch.Tensor, as_rows: bool) -> torch.Tensor:  # a copy of [B, C, P] as planes or rows
        return t.transpose(1, 2).contiguous().transpose(1, 2) if as_rows else t.clone()  # a copy either way

    out = stored(
        torch.nn.functional.elu(torch.randn(3, 70, 37, generator=gen, dtype=dtype)), rows
    )  # 37: lanes and a tail
    grad = torch.randn(3, 70, 37, generator=gen, dtype=dtype)
    want_h, want_bias = elu_backward_from_output(out, stored(grad, rows), bias_grad)
    torch.testing.assert_close(want_h, grad * torch.where(out > 0, 1.0, out + 1), atol=0, rtol=1e-15)
    reusable = stored(grad, rows)
    got_h, got_bias = elu_backward_from_output(out, reusable, bias_grad, reuse_grad=True)
    assert got_h.data_ptr() == reusable.data_ptr() and got_h.stride() == out.stride()
    assert torch.equal(got_h, want_h)
    assert (got_bias is None) == (want_bias is None) == (not bias_grad)
    if bias_grad:
        assert torch.equal(got_bias, want_bias)
        torch.testing.assert_close(got_bias, want_h.sum(2), atol=1e-5, rtol=1e-5)
    if extension:  # a gradient stored unlike out is copied, not overwritten
        unlike = stored(grad, not rows)
        got_h, _ = elu_backward_from_output(out, unlike, bias_grad, reuse_grad=True)
        assert torch.equal(unlike, grad) and torch.equal(got_h, want_h)
