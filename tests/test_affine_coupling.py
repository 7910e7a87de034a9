"""Fused affine coupling (Triton) against the plain-PyTorch reference, in both directions.

On a machine without a GPU the kernels run in the Triton interpreter (tests/conftest.py), so shapes
are tiny. Every kernel buffer is poisoned with NaN first, so an element a kernel fails to write
shows up as a mismatch.
"""

import pytest
import torch

pytest.importorskip("triton")

from kernel_checks import compile_for_gpus, poison_outputs  # noqa: E402

import fastflow.kernels.affine_coupling as kernels  # noqa: E402
from fastflow.ops.affine_coupling import (  # noqa: E402
    affine_coupling,
    affine_coupling_inverse,
    affine_coupling_inverse_reference,
    affine_coupling_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (C, split, order): odd and even channel counts; skip splits need an even C.
PATTERNS = [
    (c, split, order)
    for c in (3, 4, 9, 12)
    for split in ("continuous", "skip")
    for order in ("up", "down")
    if split == "continuous" or c % 2 == 0
]
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.float64, 1e-10, 1e-10)]
LOW_PRECISION = [(torch.float16, 2e-3, 2e-3), (torch.bfloat16, 2e-2, 2e-2)]


@pytest.fixture(autouse=True)
def poison_kernel_buffers(monkeypatch):
    poison_outputs(monkeypatch, kernels)


def make_inputs(batch, channels, spatial=(3, 3), dtype=torch.float32, layout="contiguous", additive=False, seed=0):
    """x ``[B, C, *S]``, mu and u ``[B, C // 2, *S]`` in one of three layouts, all requiring grad.

    ``"strided"``: x channels-last, mu and u halves of one conditioning-net output (views, no copy);
    ``"sliced"``: every tensor a slice ``[..., ::2]`` of a wider one (the wrapper has to copy).
    """
    gen = torch.Generator().manual_seed(seed)
    cb = channels // 2
    full = (batch, channels, *spatial)
    half = (batch, cb, *spatial)

    def rand(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    if layout == "contiguous":
        x, mu, u = rand(full), rand(half), rand(half)
    elif layout == "strided":
        x = rand(full).contiguous(memory_format=torch.channels_last)
        mu, u = rand((batch, 2 * cb, *spatial)).chunk(2, dim=1)
    elif layout == "sliced":
        wide = spatial[:-1] + (2 * spatial[-1],)
        x = rand((batch, channels, *wide))[..., ::2]
        mu, u = rand((batch, cb, *wide))[..., ::2], rand((batch, cb, *wide))[..., ::2]
    else:
        raise ValueError(layout)
    x, mu, u = (t.to(DEVICE).requires_grad_() for t in (x, mu, u))
    return x, mu, (None if additive else u)


def run(fn, inputs, seed=1):
    """Outputs of ``fn(*inputs)`` and the gradients of a random linear loss of (out, logdet)."""
    out, logdet = fn(*inputs)
    gen = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    w_logdet = torch.randn(logdet.shape, generator=gen, dtype=torch.float64).to(logdet)
    loss = (out.double() * w_out.double()).sum() + (logdet.double() * w_logdet.double()).sum()
    live = [t for t in inputs if t is not None]
    return out, logdet, torch.autograd.grad(loss, live)


def compare(fused, ref, inputs, atol, rtol):
    """Output, logdet and every gradient of ``fused`` against ``ref``; returns fused's output and logdet."""
    out, logdet, grads = run(fused, inputs)
    out_ref, logdet_ref, grads_ref = run(ref, inputs)
    torch.testing.assert_close(out, out_ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(logdet, logdet_ref, atol=atol, rtol=rtol)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    return out, logdet


def check_both_directions(x, mu, u, split, order, alpha, atol, rtol):
    """Forward, inverse and all gradients of both backends agree; the inverse undoes the forward."""
    fused = lambda *t: affine_coupling(*t, split=split, order=order, alpha=alpha, backend="triton")  # noqa: E731
    ref = lambda *t: affine_coupling_reference(*t, split, order, alpha)  # noqa: E731
    y, logdet = compare(fused, ref, (x, mu, u), atol, rtol)

    y = y.detach().requires_grad_()
    fused_inv = lambda *t: affine_coupling_inverse(  # noqa: E731
        *t, split=split, order=order, alpha=alpha, backend="triton"
    )
    ref_inv = lambda *t: affine_coupling_inverse_reference(*t, split, order, alpha)  # noqa: E731
    x_back, logdet_inv = compare(fused_inv, ref_inv, (y, mu, u), atol, rtol)
    torch.testing.assert_close(x_back, x.detach(), atol=10 * atol, rtol=10 * rtol)
    torch.testing.assert_close(logdet_inv, -logdet, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("channels, split, order", PATTERNS)
def test_matches_reference(channels, split, order, alpha, dtype, atol, rtol):
    x, mu, u = make_inputs(2, channels, dtype=dtype)
    check_both_directions(x, mu, u, split, order, alpha, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("channels, split, order", PATTERNS)
def test_additive_matches_reference(channels, split, order, dtype, atol, rtol):
    x, mu, u = make_inputs(2, channels, dtype=dtype, additive=True)
    check_both_directions(x, mu, u, split, order, 1.0, atol, rtol)


@pytest.mark.parametrize("layout", ["contiguous", "strided", "sliced"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("split", ["continuous", "skip"])
def test_batch_sizes_and_layouts(batch, layout, split):
    x, mu, u = make_inputs(batch, 12, spatial=(3, 4), layout=layout)
    check_both_directions(x, mu, u, split, "up", 1.0, 1e-5, 1e-5)


@pytest.mark.parametrize("split", ["continuous", "skip"])
def test_vectors_and_several_blocks_per_sample(split):
    """``[B, C]`` inputs (one pixel) and planes of more than one 1024-element program."""
    x, mu, u = make_inputs(3, 8, spatial=())
    check_both_directions(x, mu, u, split, "down", 1.0, 1e-5, 1e-5)
    x, mu, u = make_inputs(2, 6, spatial=(15, 25))
    check_both_directions(x, mu, u, split, "up", 0.5, 1e-5, 1e-5)


@pytest.mark.parametrize("dtype, atol, rtol", LOW_PRECISION)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_low_precision_computes_in_float32(dtype, atol, rtol, alpha):
    """Half inputs give half outputs and a float32 logdet equal to float32 math on the same values."""
    x, mu, u = make_inputs(2, 4, dtype=dtype)
    y, logdet, grads = run(lambda *t: affine_coupling(*t, "skip", "up", alpha, backend="triton"), (x, mu, u))
    assert y.dtype == dtype and logdet.dtype == torch.float32
    assert [g.dtype for g in grads] == [dtype] * 3
    wide = [t.detach().float().requires_grad_() for t in (x, mu, u)]
    y_ref, logdet_ref, grads_ref = run(lambda *t: affine_coupling_reference(*t, "skip", "up", alpha), wide)
    torch.testing.assert_close(y, y_ref.to(dtype), atol=atol, rtol=rtol)
    torch.testing.assert_close(logdet, logdet_ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want.to(dtype), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_scales_stay_finite(sign, alpha, dtype):
    """u = +-1e4 (s at 2 or 0 for alpha = 1): finite y, logdet and gradients in the forward."""
    x, mu, _ = make_inputs(2, 4, dtype=dtype)
    u = torch.full(mu.shape, sign * 1e4, dtype=dtype, device=DEVICE, requires_grad=True)
    y, logdet, grads = run(lambda *t: affine_coupling(*t, "continuous", "up", alpha, backend="triton"), (x, mu, u))
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    assert all(torch.isfinite(g).all() for g in grads)
    y_ref, logdet_ref = affine_coupling_reference(x.float(), mu.float(), u.float(), "continuous", "up", alpha)
    torch.testing.assert_close(y.float(), y_ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(logdet, logdet_ref, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize(
    "split, alpha, additive", [("continuous", 1.0, False), ("skip", 0.5, False), ("skip", 1.0, True)]
)
def test_gradcheck_float64(split, alpha, additive, inverse):
    """Both backends against finite differences, in float64."""
    x, mu, u = make_inputs(1, 4, spatial=(2, 2), dtype=torch.float64, additive=additive)
    op = affine_coupling_inverse if inverse else affine_coupling
    inputs = tuple(t for t in (x, mu, u) if t is not None)
    for backend in ("cpu", "triton"):

        def fn(*t, backend=backend):
            return op(*t, split=split, order="up", alpha=alpha, backend=backend)

        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("additive", [False, True])
def test_empty_batch(additive):
    x, mu, u = make_inputs(0, 4, additive=additive)
    y, logdet = affine_coupling(x, mu, u, "skip", "down", backend="triton")
    assert y.shape == x.shape and logdet.shape == (0,)
    (y.sum() + logdet.sum()).backward()
    assert x.grad.shape == x.shape
    x_back, logdet_inv = affine_coupling_inverse(y, mu, u, "skip", "down", backend="triton")
    assert x_back.shape == x.shape and logdet_inv.shape == (0,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mu_channels=4), "must transform between 1 and 3"),
        (dict(mu_width=2), "mu must have shape"),
        (dict(mu_channels=1, split="skip"), "skip split needs"),
        (dict(u_channels=3), "u must have the shape"),
        (dict(split="zigzag"), "unknown split"),
        (dict(order="sideways"), "unknown order"),
        (dict(alpha=0.0), "alpha must lie"),
        (dict(alpha=1.5), "alpha must lie"),
        (dict(channels=5, split="skip"), "skip split needs an even"),
        (dict(backend="cuda"), "unknown backend"),
    ],
)
@pytest.mark.parametrize("inverse", [False, True])
def test_bad_input_raises(kwargs, message, inverse):
    channels = kwargs.get("channels", 4)
    x = torch.zeros(2, channels, 3, 3, device=DEVICE)
    mu_channels = kwargs.get("mu_channels", channels // 2)
    mu_width = kwargs.get("mu_width", 3)
    mu = torch.zeros(2, mu_channels, 3, mu_width, device=DEVICE)
    u = torch.zeros(2, kwargs.get("u_channels", mu_channels), 3, mu_width, device=DEVICE)
    op = affine_coupling_inverse if inverse else affine_coupling
    with pytest.raises(ValueError, match=message):
        op(
            x,
            mu,
            u,
            kwargs.get("split", "continuous"),
            kwargs.get("order", "up"),
            kwargs.get("alpha", 1.0),
            backend=kwargs.get("backend", "triton"),
        )


def test_kernels_compile_for_a_gpu():
    """Every kernel, with and without a folded ActNorm: float32 skip split with tanh (alpha < 1),
    float64 continuous split with the reciprocal shift-first sigmoid, float32 with the clamped exp,
    float16 additive."""
    variants = []
    for dtype, acc, stride, has_u, scale in (
        ("fp32", "fp32", 2, True, (0, False, False, False)),
        ("fp64", "fp64", 1, True, (1, False, True, True)),
        ("fp32", "fp32", 2, True, (2, False, False, False)),
        ("fp32", "fp32", 1, True, (2, True, True, False)),
        ("fp16", "fp32", 1, False, (0, True, False, False)),
    ):
        types = {
            "param": "fp32",
            "start_parity": "fp32",
            "LOGDET_PART": f"*{acc}",
            "DLOGDET": f"*{acc}",
            "AFF": f"*{acc}",
            "AFF_A": f"*{acc}",
        }
        types |= {"AFF_PART": f"*{acc}"}
        types |= {n: f"*{dtype}" for n in ("X", "Y", "MU", "U", "DX", "DY", "DMU", "DU")}
        code, special, reciprocal, shift_first = scale
        constexprs = dict(
            STRIDE=stride,
            HAS_U=has_u,
            SCALE=code,
            SPECIAL=special,
            RECIPROCAL=reciprocal,
            SHIFT_FIRST=shift_first,
            ACC=f"tl.float{acc[2:]}",
        )
        for tile in (
            dict(ROWS=4, COLS=512, CHUNKS=2, VECTOR=False, ROWS_DIVIDE_C=stride == 2, PAIRS=False),
            dict(ROWS=1, COLS=512, CHUNKS=1, VECTOR=True, ROWS_DIVIDE_C=False, PAIRS=stride == 2),
        ):
            variants += [
                (
                    "_coupling_kernel",
                    types,
                    constexprs | tile | {"INVERSE": inverse, "B_ONLY": b_only, "AFFINE": affine},
                )
                for inverse in (False, True)
                for b_only, affine in ((False, False), (True, False), (False, True))
                if not (b_only and tile["PAIRS"])
            ]
            variants += [
                (name, types, constexprs | tile | {"AFFINE": affine})
                for name in ("_coupling_forward_backward_kernel", "_coupling_inverse_backward_kernel")
                for affine in (False, True)
            ]
    compile_for_gpus("fastflow.kernels.affine_coupling", variants)
