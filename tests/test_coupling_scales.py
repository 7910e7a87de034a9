"""The fused coupling's scale functions (Glow's sigmoid, RealNVP's exp with and without soft clamp,
their reciprocals), Glow's shift-first order, packed conditioning-net outputs and the in-place
no-grad form, against the plain-PyTorch reference in float32 and float64.

Kernels run in the Triton interpreter on a CPU-only machine, with every kernel buffer poisoned with
NaN (see tests/test_affine_coupling.py, whose helpers this reuses).
"""

import math

import pytest
import torch

pytest.importorskip("triton")

from kernel_checks import autograd_node_names, poison_outputs  # noqa: E402
from test_affine_coupling import DEVICE, DTYPES, compare, make_inputs, run  # noqa: E402

import fastflow.kernels.affine_coupling as kernels  # noqa: E402
from fastflow.ops.affine_coupling import (  # noqa: E402
    CouplingScale,
    affine_coupling,
    affine_coupling_inverse,
    affine_coupling_inverse_reference,
    affine_coupling_reference,
    split_params,
)

# (scale, shift_first): every kind, each special case of the kernel, both orders of shift and scale.
FORMS = [
    (CouplingScale("tanh", alpha=0.7), True),
    (CouplingScale("sigmoid"), False),
    (CouplingScale("sigmoid", offset=0.5), True),
    (CouplingScale("sigmoid", reciprocal=True), False),
    (CouplingScale("exp"), False),
    (CouplingScale("exp", clamp=2.0), True),
    (CouplingScale("exp", clamp=1.5, reciprocal=True), False),
    (CouplingScale("tanh", reciprocal=True), False),
]
IDS = [f"{s.kind}-{'r' if s.reciprocal else ''}{'shift1st' if f else ''}-{i}" for i, (s, f) in enumerate(FORMS)]


@pytest.fixture(autouse=True)
def poison_kernel_buffers(monkeypatch):
    poison_outputs(monkeypatch, kernels)


def ops(scale, shift_first, split, order, backend):
    kw = dict(split=split, order=order, scale=scale, shift_first=shift_first)
    fwd = lambda x, mu, u: affine_coupling(x, mu, u, backend=backend, **kw)  # noqa: E731
    inv = lambda y, mu, u: affine_coupling_inverse(y, mu, u, backend=backend, **kw)  # noqa: E731
    return fwd, inv


def refs(scale, shift_first, split, order):
    fwd = lambda x, mu, u: affine_coupling_reference(x, mu, u, split, order, scale=scale, shift_first=shift_first)  # noqa: E731
    inv = lambda y, mu, u: affine_coupling_inverse_reference(  # noqa: E731
        y, mu, u, split, order, scale=scale, shift_first=shift_first
    )
    return fwd, inv


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("scale, shift_first", FORMS, ids=IDS)
@pytest.mark.parametrize("channels, split, order", [(4, "skip", "up"), (5, "continuous", "down")])
def test_scales_match_reference(channels, split, order, scale, shift_first, dtype, atol, rtol):
    x, mu, u = make_inputs(2, channels, dtype=dtype, layout="strided" if channels == 4 else "contiguous")
    fused, fused_inv = ops(scale, shift_first, split, order, "triton")
    ref, ref_inv = refs(scale, shift_first, split, order)
    y, logdet = compare(fused, ref, (x, mu, u), atol, rtol)
    y = y.detach().requires_grad_()
    x_back, logdet_inv = compare(fused_inv, ref_inv, (y, mu, u), atol, rtol)
    torch.testing.assert_close(x_back, x.detach(), atol=10 * atol, rtol=10 * rtol)
    torch.testing.assert_close(logdet_inv, -logdet, atol=atol, rtol=rtol)


def test_reference_scales_are_the_published_formulas():
    """The reference's s against the formulas written out (so kernel and reference cannot share a slip)."""
    u = torch.linspace(-6, 6, 25, dtype=torch.float64)
    cases = [
        (CouplingScale("tanh", alpha=0.7), 1 + 0.7 * torch.tanh(u / 2)),
        (CouplingScale("sigmoid"), torch.sigmoid(u + 2)),
        (CouplingScale("sigmoid", offset=0.5, reciprocal=True), 1 / torch.sigmoid(u + 0.5)),
        (CouplingScale("exp"), torch.exp(u)),
        (CouplingScale("exp", clamp=2.0), torch.exp(2.0 * torch.tanh(u / 2.0))),
    ]
    for scale, expected in cases:
        s, log_s = scale.terms(u)
        torch.testing.assert_close(s, expected, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(log_s, expected.log(), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("scale, shift_first", FORMS, ids=IDS)
def test_gradcheck_float64(scale, shift_first, inverse):
    x, mu, u = make_inputs(1, 4, spatial=(2, 2), dtype=torch.float64)
    for backend in ("cpu", "triton"):
        fwd, inv = ops(scale, shift_first, "skip", "down", backend)
        assert torch.autograd.gradcheck(inv if inverse else fwd, (x, mu, u), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("scale, shift_first", FORMS, ids=IDS)
def test_extreme_u(scale, shift_first, dtype, sign):
    """u = +-1e4: log s and the logdet stay finite for every scale; y and all gradients too wherever
    s itself is finite (not for exp at +1e4 or 1 / sigmoid at -1e4, where s overflows in any code)."""
    x, mu, _ = make_inputs(2, 4, dtype=dtype)
    u = torch.full(mu.shape, sign * 1e4, dtype=dtype, device=DEVICE, requires_grad=True)
    fwd, _ = ops(scale, shift_first, "continuous", "up", "triton")
    _, logdet = fwd(x, mu, u)
    _, log_s = scale.terms(u.detach().float())
    assert torch.isfinite(log_s).all() and torch.isfinite(logdet).all()
    torch.testing.assert_close(logdet, log_s.flatten(1).sum(1), atol=1e-3, rtol=1e-6)
    if torch.isfinite(scale.terms(u.detach().double())[0]).all():
        y, logdet, grads = run(fwd, (x, mu, u))
        assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
        y_ref, _ = affine_coupling_reference(
            x.float(), mu.float(), u.float(), "continuous", "up", scale=scale, shift_first=shift_first
        )
        torch.testing.assert_close(y.float(), y_ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("layout", ["shift_scale", "scale_shift", "interleaved"])
@pytest.mark.parametrize("inverse", [False, True])
def test_packed_params_one_gradient_buffer(layout, inverse):
    """A conditioning net's whole output as params: same results as mu and u, and the gradient reaches
    the net output as one tensor (no slice or split node between the coupling and params)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(2, 6, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = CouplingScale("sigmoid")
    op = affine_coupling_inverse if inverse else affine_coupling

    def packed(x, raw):
        return op(x, split="skip", order="up", scale=scale, params=raw * 1.0, layout=layout, backend="triton")

    def separate(x, raw):
        mu, u = split_params(raw, layout, additive=False)
        return op(x, mu, u, "skip", "up", scale=scale, backend="cpu")

    y, logdet, grads = run(packed, (x, raw))
    y_ref, logdet_ref, grads_ref = run(separate, (x, raw))
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logdet, logdet_ref, atol=1e-12, rtol=1e-12)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    names = autograd_node_names(y)
    assert "AffineCouplingFunctionBackward" in names
    assert not any("Slice" in n or "Split" in n or "Select" in n for n in names), names


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("split, order", [("skip", "up"), ("continuous", "down")])
def test_transformed_channels_only(split, order, inverse):
    """With ``out`` the kernel writes the transformed channels and leaves every other element alone."""
    x, mu, u = (t.detach() for t in make_inputs(2, 6, spatial=(4, 5)))
    flat = [t.reshape(t.shape[0], t.shape[1], -1) for t in (x, mu, u)]
    start, stride = (1, 2) if split == "skip" else (0, 1)
    form = CouplingScale("exp", clamp=3.0).kernel_form(shift_first=False)
    out = torch.full_like(flat[0], 7.0)
    got, logdet = kernels.coupling_apply(*flat, start, stride, form, inverse, out=out)
    want, logdet_want = kernels.coupling_apply(*flat, start, stride, form, inverse)
    b = torch.zeros(6, dtype=torch.bool)
    b[start::stride][: mu.shape[1]] = True
    assert got is out
    assert torch.equal(out[:, ~b], torch.full_like(out[:, ~b], 7.0))
    torch.testing.assert_close(out[:, b], want[:, b], atol=0, rtol=0)
    torch.testing.assert_close(logdet, logdet_want, atol=1e-5, rtol=1e-6)  # other summation blocks


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_inplace_no_grad(backend):
    x, mu, u = (t.detach() for t in make_inputs(2, 4, spatial=(3, 3), dtype=torch.float64))
    scale = CouplingScale("sigmoid", reciprocal=True)
    y_ref, logdet_ref = affine_coupling_reference(x, mu, u, "skip", "down", scale=scale)
    buf = x.clone()
    y, logdet = affine_coupling(buf, mu, u, "skip", "down", scale=scale, backend=backend, inplace=True)
    assert y.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(buf, y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logdet, logdet_ref, atol=1e-12, rtol=1e-12)
    x_back, _ = affine_coupling_inverse(buf, mu, u, "skip", "down", scale=scale, backend=backend, inplace=True)
    torch.testing.assert_close(x_back, x, atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="inplace=True"):
        affine_coupling(x.requires_grad_(), mu, u, "skip", "down", scale=scale, backend=backend, inplace=True)


@pytest.mark.parametrize(
    "make_scale, message",
    [
        (lambda: "cosh", "unknown scale"),
        (lambda: CouplingScale("exp", clamp=-1.0), "exp clamp"),
        (lambda: CouplingScale("sigmoid", offset=math.inf), "offset must be finite"),
        (lambda: "additive", "takes no u"),
        (lambda: 3, "scale must be a str"),
    ],
)
def test_bad_scale_raises(make_scale, message):
    x, mu, u = (t.detach() for t in make_inputs(2, 4))
    with pytest.raises((ValueError, TypeError), match=message):
        affine_coupling(x, mu, u, backend="cpu", scale=make_scale())


def test_bad_params_raise():
    x = torch.zeros(2, 4, 3, 3)
    with pytest.raises(ValueError, match="unknown params layout"):
        affine_coupling(x, params=torch.zeros(2, 4, 3, 3), layout="diagonal")
    with pytest.raises(ValueError, match="even channel count"):
        affine_coupling(x, params=torch.zeros(2, 3, 3, 3))
    with pytest.raises(ValueError, match="either mu and u or params"):
        affine_coupling(x, torch.zeros(2, 2, 3, 3), params=torch.zeros(2, 4, 3, 3))
