"""Fused ActNorm + 1x1 convolution (Triton GEMM) against the plain-PyTorch reference.

On a machine without a GPU the kernels run in the Triton interpreter (tests/conftest.py), whose
float64 dots are exact float64 products, so float64 is tested here with float64 tolerances. On a
GPU the float32 tolerances allow TF32 dots (taken when torch's float32 matmul precision is not
"highest"). Every kernel buffer is poisoned with NaN first, so an element a kernel fails to write
shows up as a mismatch.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from kernel_checks import compile_for_gpus, poison_outputs, random_layout  # noqa: E402

import fastflow.kernels.actnorm_conv1x1 as kernels  # noqa: E402
from fastflow.ops.actnorm_conv1x1 import (  # noqa: E402
    actnorm_conv1x1,
    actnorm_conv1x1_inverse,
    actnorm_conv1x1_inverse_reference,
    actnorm_conv1x1_reference,
)
from fastflow.ops.slogdet import batched_inverse  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP32_TOL = 5e-3 if DEVICE == "cuda" else 2e-5
DTYPES = [(torch.float32, FP32_TOL, FP32_TOL), (torch.float64, 1e-10, 1e-10)]
LOW_PRECISION = [(torch.float16, 5e-3, 5e-3), (torch.bfloat16, 3e-2, 3e-2)]


@pytest.fixture(autouse=True)
def poison_kernel_buffers(monkeypatch):
    poison_outputs(monkeypatch, kernels)


def make_inputs(batch, channels, spatial=(3, 5), dtype=torch.float32, param_dtype=None, layout="contiguous", seed=0):
    """x ``[B, C, H, W]`` and (log_scale, bias, weight) with an orthogonal-ish well-conditioned W.

    ``"strided"``: x channels-last and W a transposed view; ``"sliced"``: x a ``[..., ::2]`` slice.
    """
    gen = torch.Generator().manual_seed(seed)
    param_dtype = param_dtype or dtype
    shape = (batch, channels, *spatial)
    x = random_layout(shape, layout, gen)
    log_scale = 0.3 * torch.randn(channels, generator=gen, dtype=torch.float64)
    bias = torch.randn(channels, generator=gen, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(channels, channels, generator=gen, dtype=torch.float64))[0]
    weight = q + 0.1 * torch.randn(channels, channels, generator=gen, dtype=torch.float64)
    weight = weight.t().contiguous().t() if layout == "strided" else weight
    x = x.to(DEVICE, dtype).requires_grad_()
    params = [p.to(DEVICE, param_dtype).requires_grad_() for p in (log_scale, bias, weight)]
    return x, *params


def run(fn, inputs, seed=1):
    """Output of ``fn(*inputs)`` and the gradients of a random linear loss of it."""
    out = fn(*inputs)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
    return out, torch.autograd.grad((out.double() * w).sum(), inputs)


def reference_inverse(y, log_scale, bias, weight):
    return actnorm_conv1x1_inverse_reference(y, log_scale, bias, batched_inverse(weight.unsqueeze(0))[0])


def check_both_directions(x, log_scale, bias, weight, atol, rtol):
    """Forward, inverse and every gradient (x and the three parameters) of both backends agree with
    the literal two-pass reference; the inverse undoes the forward."""
    params = (log_scale, bias, weight)
    y_ref, grads_ref = run(actnorm_conv1x1_reference, (x, *params))
    y_in = y_ref.detach().requires_grad_()
    x_ref, grads_inv_ref = run(reference_inverse, (y_in, *params))
    for backend in ("cpu", "triton"):
        y, grads = run(lambda *t, backend=backend: actnorm_conv1x1(*t, backend=backend)[0], (x, *params))
        torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
        for got, want in zip(grads, grads_ref):
            torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
        x_back, grads_inv = run(
            lambda *t, backend=backend: actnorm_conv1x1_inverse(*t, backend=backend)[0], (y_in, *params)
        )
        torch.testing.assert_close(x_back, x_ref, atol=atol, rtol=rtol)
        for got, want in zip(grads_inv, grads_inv_ref):
            torch.testing.assert_close(got, want, atol=10 * atol, rtol=10 * rtol)
        torch.testing.assert_close(x_back, x.detach(), atol=10 * atol, rtol=10 * rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels", [3, 4, 9, 12, 40, 72])
def test_matches_reference(channels, batch, dtype, atol, rtol):
    """Odd and even channel counts; 40 and 72 span several input and output tiles."""
    check_both_directions(*make_inputs(batch, channels, dtype=dtype), atol, rtol)


@pytest.mark.parametrize("layout", ["strided", "sliced"])
def test_non_contiguous_inputs(layout):
    check_both_directions(*make_inputs(2, 6, layout=layout), FP32_TOL, FP32_TOL)


def test_pixel_tiles_and_reduction_chunks():
    """More pixels than one tile, and every way of chunking the weight-gradient reduction."""
    check_both_directions(*make_inputs(2, 5, spatial=(12, 13)), FP32_TOL, FP32_TOL)
    gen = torch.Generator().manual_seed(0)
    dy = torch.randn(3, 5, 300, generator=gen).to(DEVICE)
    x = torch.randn(3, 7, 300, generator=gen).to(DEVICE)
    for splits in (1, 2, 4, 5, 100):
        g, r = kernels.outer_sum(dy, x, splits=splits)
        torch.testing.assert_close(g, torch.einsum("bop,bkp->ok", dy, x), atol=10 * FP32_TOL, rtol=FP32_TOL)
        torch.testing.assert_close(r, dy.sum((0, 2)), atol=1e-4, rtol=1e-5)


def test_closed_form_parameter_gradients():
    """dW = G diag(e) + r b^T, d bias = W^T r, d log_scale = e * (W o G).sum(0), with
    G = sum dy x^T and r = sum dy from the reduction kernel (the derivation in the ops docstring)."""
    x, log_scale, bias, weight = make_inputs(2, 5, dtype=torch.float64)
    dy = torch.randn(2, 5, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    y_ref = actnorm_conv1x1_reference(x, log_scale, bias, weight)
    d_log_scale, d_bias, d_weight = torch.autograd.grad(y_ref, (log_scale, bias, weight), dy)
    g, r = kernels.outer_sum(dy.flatten(2), x.detach().flatten(2))
    e, w = log_scale.detach().exp(), weight.detach()
    torch.testing.assert_close(d_weight, g * e + torch.outer(r, bias.detach()), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(d_bias, w.t() @ r, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(d_log_scale, e * (w * g).sum(0), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype, atol, rtol", LOW_PRECISION)
def test_low_precision_computes_in_float32(dtype, atol, rtol):
    """Half x with float32 parameters: y and dx in x's dtype, parameter gradients in float32."""
    x, log_scale, bias, weight = make_inputs(2, 12, dtype=dtype, param_dtype=torch.float32)
    y, grads = run(lambda *t: actnorm_conv1x1(*t, backend="triton")[0], (x, log_scale, bias, weight))
    assert y.dtype == dtype and [g.dtype for g in grads] == [dtype] + [torch.float32] * 3
    x32 = x.detach().float().requires_grad_()
    y_ref, grads_ref = run(actnorm_conv1x1_reference, (x32, log_scale, bias, weight))
    torch.testing.assert_close(y, y_ref.to(dtype), atol=atol, rtol=rtol)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got.float(), want, atol=atol * (1 + want.abs().max().item()), rtol=rtol)


def test_logdet_and_round_trip():
    """logdet = H W (sum log_scale + log|det W|), the same for both backends, negated by the inverse."""
    x, log_scale, bias, weight = make_inputs(3, 4)
    y, logdet = actnorm_conv1x1(x, log_scale, bias, weight, backend="triton")
    _, logdet_ref = actnorm_conv1x1(x, log_scale, bias, weight, backend="cpu")
    expected = 15 * (log_scale.sum().item() + np.linalg.slogdet(weight.detach().double().cpu().numpy())[1])
    torch.testing.assert_close(
        logdet.double().cpu(), torch.full((3,), expected, dtype=torch.float64), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(logdet, logdet_ref, atol=0.0, rtol=0.0)
    x_back, logdet_inv = actnorm_conv1x1_inverse(y, log_scale, bias, weight, backend="triton")
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logdet_inv, -logdet, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("inverse", [False, True])
def test_logdet_matches_the_jacobian(backend, inverse):
    """float64: each sample's logdet is log|det| of the brute-force Jacobian of its map (numpy's
    LAPACK), for the forward and the inverse; H W = 6 pixels of 5 channels (a 30 x 30 Jacobian)."""
    x, log_scale, bias, weight = (t.detach() for t in make_inputs(2, 5, spatial=(2, 3), dtype=torch.float64))
    op = actnorm_conv1x1_inverse if inverse else actnorm_conv1x1
    _, logdet = op(x, log_scale, bias, weight, backend=backend)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda t: op(t.view(1, 5, 2, 3), log_scale, bias, weight, backend=backend)[0].flatten(), x[i].flatten()
        )
        sign, truth = np.linalg.slogdet(jac.cpu().numpy())
        assert sign != 0
        assert abs(logdet[i].item() - truth) < 1e-10 * max(1.0, abs(truth))


@pytest.mark.parametrize("inverse", [False, True])
def test_gradcheck_float64(inverse):
    """Both backends against finite differences, in float64."""
    inputs = make_inputs(1, 3, spatial=(2, 2), dtype=torch.float64)
    op = actnorm_conv1x1_inverse if inverse else actnorm_conv1x1
    for backend in ("cpu", "triton"):

        def fn(*t, backend=backend):
            return op(*t, backend=backend)

        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_empty_batch(backend):
    x, log_scale, bias, weight = make_inputs(0, 4)
    y, logdet = actnorm_conv1x1(x, log_scale, bias, weight, backend=backend)
    assert y.shape == x.shape and logdet.shape == (0,)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(weight.grad, torch.zeros_like(weight))
    x_back, _ = actnorm_conv1x1_inverse(y, log_scale, bias, weight, backend=backend)
    assert x_back.shape == x.shape


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(x=torch.zeros(2, 4, 3)), r"\[B, C, H, W\]"),
        (dict(log_scale=torch.zeros(3)), "log_scale and bias must have shape"),
        (dict(bias=torch.zeros(4, 1)), "log_scale and bias must have shape"),
        (dict(weight=torch.zeros(4, 3)), "weight must have shape"),
        (dict(weight_inverse=torch.zeros(3, 3)), "weight_inverse must have shape"),
        (dict(backend="gpu"), "unknown backend"),
    ],
)
def test_bad_input_raises(change, message):
    args = dict(
        x=torch.zeros(2, 4, 3, 3),
        log_scale=torch.zeros(4),
        bias=torch.zeros(4),
        weight=torch.eye(4),
        weight_inverse=torch.eye(4),
        backend="triton",
    )
    args.update(change)
    args = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in args.items()}
    inverse_args = dict(args, y=args.pop("x"))
    with pytest.raises(ValueError, match=message):
        actnorm_conv1x1_inverse(**inverse_args)
    if "weight_inverse" not in change:
        del args["weight_inverse"]
        with pytest.raises(ValueError, match=message):
            actnorm_conv1x1(inverse_args["y"], **args)


def test_kernels_compile_for_a_gpu():
    """Both kernels with IEEE float32, TF32, float16 and float64 dots, small and large tiles."""
    variants = []
    for dtype, acc, precision, (block_o, block_k, block_p) in (
        ("fp32", "fp32", "ieee", (16, 16, 16)),
        ("fp32", "fp32", "tf32", (64, 32, 128)),
        ("fp16", "fp32", "ieee", (64, 32, 128)),
        ("fp64", "fp64", "ieee", (16, 16, 16)),
    ):
        types = {"X": f"*{dtype}", "Y": f"*{dtype}", "DY": f"*{dtype}"}
        types |= {n: f"*{acc}" for n in ("M", "BIAS", "G_PART", "R_PART")}
        common = dict(ACC=f"tl.float{acc[2:]}", PRECISION=precision, BLOCK_O=block_o, BLOCK_K=block_k, BLOCK_P=block_p)
        variants += [("_pixel_affine_kernel", types, dict(common, HAS_BIAS=True)), ("_outer_sum_kernel", types, common)]
    compile_for_gpus("fastflow.kernels.actnorm_conv1x1", variants)
