"""The C++ CPU kernels of the affine coupling (csrc/affine_coupling.cpp, the cpu backend on CPU
tensors) against the plain-PyTorch reference, in both directions, for every scale function.

Every new tensor (the kernels' outputs too) is filled with NaN first (the ``poisoned_empty``
fixture), so an element a kernel fails to write shows up as a mismatch. Tolerances: float64 1e-12,
float32 1e-5 (the kernels' exp and log are within an ulp or two of float32's), bfloat16 outputs
against the float32 reference rounded once.
"""

import pytest
import torch
from kernel_checks import autograd_node_names

from fastflow.flows.coupling import image_coupling
from fastflow.ops import affine_coupling as coupling_ops
from fastflow.ops.affine_coupling import (
    CouplingScale,
    affine_coupling,
    affine_coupling_inverse,
    affine_coupling_inverse_reference,
    affine_coupling_reference,
    split_params,
)
from fastflow.ops.cpu import affine_coupling as cpu_coupling

pytestmark = pytest.mark.skipif(not cpu_coupling.kernels_loaded(), reason="the C++ extension is not built")

# Every kind of scale and each special case the kernels branch on, both orders of shift and scale.
SCALES = [
    (CouplingScale("tanh"), False),  # Wolf, alpha 1 (the special case)
    (CouplingScale("tanh", alpha=0.5), False),
    (CouplingScale("tanh", alpha=0.7), True),
    (CouplingScale("tanh", reciprocal=True), False),
    (CouplingScale("sigmoid"), False),
    (CouplingScale("sigmoid", offset=0.5), True),
    (CouplingScale("sigmoid", reciprocal=True), False),
    (CouplingScale("exp"), False),
    (CouplingScale("exp", clamp=2.0), True),
    (CouplingScale("exp", clamp=1.5, reciprocal=True), False),
    (CouplingScale("additive"), False),
]
SCALE_IDS = [
    f"{s.kind}{s.alpha if s.kind == 'tanh' else ''}{'-r' if s.reciprocal else ''}{'-shift1st' if f else ''}"
    for s, f in SCALES
]
PATTERNS = [(5, "continuous", "up"), (6, "continuous", "down"), (6, "skip", "up"), (4, "skip", "down")]
DTYPES = [(torch.float64, 1e-12), (torch.float32, 1e-5)]


def inputs(channels, scale, dtype=torch.float64, spatial=(3, 5), batch=3, layout="contiguous", seed=0):
    """x ``[B, C, *S]`` and mu, u ``[B, C // 2, *S]`` (u None for the additive scale), requiring grad.

    ``"channels_last"``: x channels-last and mu, u halves of one tensor; ``"sliced"``: every tensor a
    ``[..., ::2]`` slice of a wider one (non-unit pixel strides: the kernels' strided loops)."""
    gen = torch.Generator().manual_seed(seed)
    cb = channels // 2

    def rand(shape, std=1.0):
        return (std * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)

    full, half = (batch, channels, *spatial), (batch, cb, *spatial)
    if layout == "contiguous":
        x, mu, u = rand(full), rand(half), rand(half, 2.0)
    elif layout == "channels_last":
        x = rand(full).contiguous(memory_format=torch.channels_last)
        mu, u = rand((batch, 2 * cb, *spatial), 2.0).chunk(2, dim=1)
    else:
        wide = spatial[:-1] + (2 * spatial[-1],)
        x, mu = rand((batch, channels, *wide))[..., ::2], rand((batch, cb, *wide))[..., ::2]
        u = rand((batch, cb, *wide), 2.0)[..., ::2]
    x, mu, u = (t.requires_grad_() for t in (x, mu, u))  # views of tensors without grad: leaves
    return x, mu, None if scale.additive else u


def outputs_and_grads(fn, tensors, seed=1):
    """``fn(*tensors)`` and the gradients of a random linear function of (out, logdet) in float64."""
    out, logdet = fn(*tensors)
    gen = torch.Generator().manual_seed(seed)
    loss = (out.double() * torch.randn(out.shape, generator=gen, dtype=torch.float64)).sum()
    loss = loss + (logdet.double() * torch.randn(logdet.shape, generator=gen, dtype=torch.float64)).sum()
    live = [t for t in tensors if t is not None]
    return out, logdet, torch.autograd.grad(loss, live)


def both_ways(scale, shift_first, split, order, backend):
    kw = dict(split=split, order=order, scale=scale, shift_first=shift_first)
    if backend == "reference":
        return (
            lambda x, mu, u: affine_coupling_reference(x, mu, u, **kw),
            lambda y, mu, u: affine_coupling_inverse_reference(y, mu, u, **kw),
        )
    return (
        lambda x, mu, u: affine_coupling(x, mu, u, backend=backend, **kw),
        lambda y, mu, u: affine_coupling_inverse(y, mu, u, backend=backend, **kw),
    )


def assert_matches(fn, ref, tensors, tol):
    got, want = outputs_and_grads(fn, tensors), outputs_and_grads(ref, tensors)
    torch.testing.assert_close(got[0], want[0], atol=tol, rtol=tol)
    torch.testing.assert_close(got[1], want[1], atol=tol, rtol=tol)
    for g, w in zip(got[2], want[2]):
        torch.testing.assert_close(g, w, atol=tol, rtol=tol)


def test_cpu_backend_runs_the_cpu_kernels():
    x, mu, u = inputs(4, CouplingScale("tanh"))
    y, _ = affine_coupling(x, mu, u, "skip", "up", backend="cpu")
    assert type(y.grad_fn).__name__ == "ViewBackward0"
    assert type(y.grad_fn.next_functions[0][0]).__name__ == "AffineCouplingFunctionBackward"
    y_ref, _ = affine_coupling(x, mu, u, "skip", "up", backend="reference")
    assert "AffineCouplingFunction" not in type(y_ref.grad_fn).__name__


@pytest.mark.parametrize("dtype, tol", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("channels, split, order", PATTERNS)
@pytest.mark.parametrize("scale, shift_first", SCALES, ids=SCALE_IDS)
def test_matches_reference_both_directions(scale, shift_first, channels, split, order, dtype, tol, poisoned_empty):
    """Output, logdet and every gradient, density and generation direction; the inverse undoes the forward."""
    x, mu, u = inputs(channels, scale, dtype)
    fwd, inv = both_ways(scale, shift_first, split, order, "cpu")
    fwd_ref, inv_ref = both_ways(scale, shift_first, split, order, "reference")
    assert_matches(fwd, fwd_ref, (x, mu, u), tol)
    y = fwd(x, mu, u)[0].detach().requires_grad_()
    assert_matches(inv, inv_ref, (y, mu, u), tol)
    x_back, logdet_inv = inv(y, mu, u)
    torch.testing.assert_close(x_back, x, atol=10 * tol, rtol=10 * tol)
    torch.testing.assert_close(logdet_inv, -fwd(x, mu, u)[1], atol=tol, rtol=tol)


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
@pytest.mark.parametrize("scale, shift_first", [SCALES[0], SCALES[5], SCALES[10]], ids=lambda v: str(v))
def test_strided_inputs(layout, scale, shift_first, poisoned_empty):
    """Channels-last x with mu, u halves of one tensor, and non-unit pixel strides everywhere."""
    x, mu, u = inputs(6, scale, layout=layout)
    for split, order in (("skip", "down"), ("continuous", "up")):
        fwd, inv = both_ways(scale, shift_first, split, order, "cpu")
        fwd_ref, inv_ref = both_ways(scale, shift_first, split, order, "reference")
        assert_matches(fwd, fwd_ref, (x, mu, u), 1e-12)
        assert_matches(inv, inv_ref, (x, mu, u), 1e-12)


@pytest.mark.parametrize("scale, shift_first", [SCALES[0], SCALES[6], SCALES[8]], ids=["tanh", "sigmoid-r", "exp-c"])
def test_bfloat16_computes_in_float32(scale, shift_first, poisoned_empty):
    """bfloat16 in and out: the float32 result on the same (bfloat16) values, rounded once."""
    x, mu, u = inputs(6, scale, torch.bfloat16)
    fwd, _ = both_ways(scale, shift_first, "skip", "up", "cpu")
    fwd_ref, _ = both_ways(scale, shift_first, "skip", "up", "reference")
    y, logdet, grads = outputs_and_grads(fwd, (x, mu, u))
    as_float = [t.detach().float().requires_grad_() for t in (x, mu, u)]
    y_ref, logdet_ref, grads_ref = outputs_and_grads(fwd_ref, as_float)
    assert y.dtype == torch.bfloat16 and logdet.dtype == torch.float32
    torch.testing.assert_close(y, y_ref.bfloat16(), atol=0, rtol=2**-8)
    torch.testing.assert_close(logdet, logdet_ref, atol=1e-5, rtol=1e-5)
    for g, w in zip(grads, grads_ref):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w, atol=1e-2, rtol=2**-7)


def test_narrower_params_are_cast_up():
    """A float32 x with bfloat16 mu and u (an autocast network) gives the reference's float32 result,
    and the gradients reach mu and u in bfloat16."""
    x, mu, u = inputs(4, CouplingScale("tanh"), torch.float32)
    mu16, u16 = (t.detach().bfloat16().requires_grad_() for t in (mu, u))
    fwd, _ = both_ways(CouplingScale("tanh"), False, "skip", "up", "cpu")
    fwd_ref, _ = both_ways(CouplingScale("tanh"), False, "skip", "up", "reference")
    y, logdet, grads = outputs_and_grads(fwd, (x, mu16, u16))
    y_ref, logdet_ref, grads_ref = outputs_and_grads(fwd_ref, (x, mu16, u16))
    assert y.dtype == torch.float32 and [g.dtype for g in grads] == [torch.float32, torch.bfloat16, torch.bfloat16]
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logdet, logdet_ref, atol=1e-5, rtol=1e-6)
    for g, w in zip(grads, grads_ref):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("scale, shift_first", [SCALES[1], SCALES[4], SCALES[9], SCALES[10]], ids=lambda v: str(v))
def test_gradcheck_float64(scale, shift_first, inverse):
    x, mu, u = inputs(4, scale, spatial=(2, 3), batch=2)
    fwd, inv = both_ways(scale, shift_first, "skip", "down", "cpu")
    fn = inv if inverse else fwd
    tensors = tuple(t for t in (x, mu, u) if t is not None)
    assert torch.autograd.gradcheck(lambda *t: fn(*t) if len(t) == 3 else fn(*t, None), tensors)


@pytest.mark.parametrize("layout", ["shift_scale", "scale_shift", "interleaved"])
@pytest.mark.parametrize("inverse", [False, True])
def test_packed_params_one_gradient_buffer(layout, inverse, poisoned_empty):
    """A conditioning net's whole output as params: the reference's results, and its gradient reaches
    the net output as one tensor (no slice or split node between the coupling and params)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(2, 6, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = CouplingScale("sigmoid")
    op = affine_coupling_inverse if inverse else affine_coupling
    ref = affine_coupling_inverse_reference if inverse else affine_coupling_reference

    def packed(x, raw):
        return op(x, split="skip", order="up", scale=scale, params=raw * 1.0, layout=layout, backend="cpu")

    def separate(x, raw):
        return ref(x, *split_params(raw, layout, additive=False), "skip", "up", scale=scale)

    assert_matches(packed, separate, (x, raw), 1e-12)
    y, _ = packed(x, raw)
    names = autograd_node_names(y)
    assert "AffineCouplingFunctionBackward" in names
    assert not any(n.startswith(("Slice", "Split", "Select", "Cat", "Stack")) for n in names), names


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("split, order", [("skip", "up"), ("continuous", "down")])
def test_inplace_writes_the_transformed_channels_only(split, order, inverse):
    """Under no_grad, ``inplace=True`` writes y over x with the C++ in-place op; the conditioning channels
    are left as they were (a kernel writing them would change their bits, checked by a sentinel)."""
    scale = CouplingScale("exp", clamp=2.0)
    x, mu, u = (t.detach() for t in inputs(6, scale))
    op = affine_coupling_inverse if inverse else affine_coupling
    want, logdet_want = op(x, mu, u, split, order, scale=scale, backend="reference")
    buf = x.clone()
    cond = coupling_ops.conditioning_channels(6, 3, split, order)
    buf[:, cond] = float("nan")  # the kernel must not read or rewrite these
    with torch.no_grad():
        out, logdet = op(buf, mu, u, split, order, scale=scale, backend="cpu", inplace=True)
    assert out is buf and torch.isnan(buf[:, cond]).all()
    trans = coupling_ops.transformed_channels(6, 3, split, order)
    torch.testing.assert_close(buf[:, trans], want[:, trans], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logdet, logdet_want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("scale, shift_first", SCALES[:10], ids=SCALE_IDS[:10])
def test_extreme_u(scale, shift_first, sign):
    """u = +-1e4 in float32: log s and the logdet stay finite for every scale; y and every gradient too
    wherever s itself is finite (not exp at +1e4 or 1 / sigmoid at -1e4, where s overflows in any code)."""
    x, mu, _ = inputs(4, scale, torch.float32)
    u = torch.full(mu.shape, sign * 1e4, requires_grad=True)
    fwd, _ = both_ways(scale, shift_first, "continuous", "up", "cpu")
    _, log_s = scale.terms(u.detach())
    y, logdet = fwd(x, mu, u)
    assert torch.isfinite(logdet).all()
    torch.testing.assert_close(logdet, log_s.flatten(1).sum(1), atol=1e-3, rtol=1e-6)
    if torch.isfinite(scale.terms(u.detach().double())[0]).all():
        y, logdet, grads = outputs_and_grads(fwd, (x, mu, u))
        assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
        y_ref, _ = affine_coupling_reference(x, mu, u, "continuous", "up", scale=scale, shift_first=shift_first)
        torch.testing.assert_close(y, y_ref, atol=1e-3, rtol=1e-3)


def test_same_bits_on_one_and_two_threads():
    """Planes are split over threads but each sum has a fixed order: results do not depend on the
    thread count (large enough that two threads get work)."""
    scale = CouplingScale("tanh", alpha=0.6)
    x, mu, u = inputs(8, scale, torch.float32, spatial=(32, 32), batch=4)
    fwd, _ = both_ways(scale, False, "skip", "up", "cpu")
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(outputs_and_grads(fwd, (x, mu, u)))
    finally:
        torch.set_num_threads(threads)
    (y1, l1, g1), (y2, l2, g2) = results
    assert torch.equal(y1, y2) and torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_empty_batch():
    x, mu, u = (t.detach()[:0].requires_grad_() for t in inputs(4, CouplingScale("tanh")))
    y, logdet = affine_coupling(x, mu, u, "skip", "up", backend="cpu")
    assert y.shape == x.shape and logdet.shape == (0,)
    (y.sum() + logdet.sum()).backward()
    assert x.grad.shape == x.shape and u.grad.shape == u.shape


def test_without_the_extension_the_reference_runs(monkeypatch):
    monkeypatch.setattr(cpu_coupling, "kernels_loaded", lambda: False)
    x, mu, u = inputs(4, CouplingScale("tanh"))
    y, _ = affine_coupling(x, mu, u, "skip", "up", backend="cpu")
    assert "AffineCouplingFunction" not in type(y.grad_fn).__name__


def test_coupling_layer_on_the_cpu_backend():
    """A Wolf image coupling (net + coupling) on the cpu backend: the reference backend's loss and
    gradients, and its graph holds the fused coupling with no cat, slice or split around it."""
    torch.manual_seed(0)
    layer = image_coupling(6, 8, 3, "skip", "up").double()
    for p in layer.net.conv_out.parameters():  # the last layer starts at zero: make it non-trivial
        torch.nn.init.normal_(p, std=0.3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    results = {}
    for backend in ("cpu", "reference"):
        layer.backend = layer.net.backend = backend
        y, logdet = layer(x, z)
        loss = (y * y.detach().sin()).sum() + logdet.sum()
        results[backend] = (y, logdet, torch.autograd.grad(loss, [x, *layer.parameters()]))
        if backend == "cpu":
            assert type(y.grad_fn.next_functions[0][0]).__name__ == "AffineCouplingFunctionBackward"
            assert not any(
                type(f).__name__.startswith(("Slice", "Cat", "Stack", "Split")) for f, _ in y.grad_fn.next_functions
            )
    for got, want in zip(results["cpu"][:2], results["reference"][:2]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    for got, want in zip(results["cpu"][2], results["reference"][2]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


FORM = dict(start=1, stride=2, scale=0, param=1.0, special=True, reciprocal=False, shift_first=False, inverse=False)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(mu=torch.zeros(2, 2, 5, dtype=torch.float32)), "mu of x's dtype"),
        (dict(x=torch.zeros(2, 4, 5, 1, dtype=torch.float64)), r"x of shape \[B, C, P\]"),
        (dict(mu=torch.zeros(2, 2, 4, dtype=torch.float64)), r"mu of shape \[B, Cb, P\]"),
        (dict(u=torch.zeros(2, 1, 5, dtype=torch.float64)), "u of mu's shape"),
        (dict(x=torch.zeros(2, 4, 5, dtype=torch.int32)), "float32, float64 or bfloat16"),
        (dict(start=2), "must lie in x's 4 channels"),
        (dict(stride=0), "must lie in x's 4 channels"),
        (dict(scale=5), r"scale 0 \(tanh\)"),
        (dict(layout=7), "layout 0"),
        (dict(grad_logdet=torch.zeros(3, dtype=torch.float64)), r"grad_logdet of shape \[2\]"),
    ],
)
def test_kernel_bad_input_raises(change, message):
    """The operators name the argument that is wrong and what they expect."""
    args = dict(x=torch.zeros(2, 4, 5, dtype=torch.float64), mu=torch.zeros(2, 2, 5, dtype=torch.float64))
    args.update(u=torch.zeros(2, 2, 5, dtype=torch.float64), **FORM)
    backward = "layout" in change or "grad_logdet" in change
    args.update(change)
    layout = args.pop("layout", 0)
    grad_logdet = args.pop("grad_logdet", torch.zeros(2, dtype=torch.float64))
    with pytest.raises((ValueError, TypeError), match=message):
        if backward:
            x, mu, u = args.pop("x"), args.pop("mu"), args.pop("u")
            torch.ops.fastflow.coupling_backward(x, mu, u, torch.zeros_like(x), grad_logdet, *args.values(), layout)
        else:
            torch.ops.fastflow.coupling_apply(*args.values())


@pytest.mark.parametrize("scale, shift_first", SCALES, ids=SCALE_IDS)
def test_nan_and_inf_propagate_as_in_the_reference(scale, shift_first):
    """A NaN in u and an inf in x reach y and the logdet where the reference's do, so the models'
    non-finite checks see them (the kernels' own exp and log must not turn NaN into a number)."""
    x, mu, u = (None if t is None else t.detach() for t in inputs(6, scale, torch.float32))
    x[0, 4, 1, 2] = float("inf")
    if u is not None:
        u[1, 0, 2, 3] = float("nan")
    else:
        mu[1, 0, 2, 3] = float("nan")
    for fn, ref in zip(
        both_ways(scale, shift_first, "continuous", "up", "cpu"),
        both_ways(scale, shift_first, "continuous", "up", "reference"),
    ):
        (y, logdet), (y_ref, logdet_ref) = fn(x, mu, u), ref(x, mu, u)
        assert torch.equal(torch.isnan(y), torch.isnan(y_ref)) and torch.equal(torch.isinf(y), torch.isinf(y_ref))
        assert torch.equal(torch.isnan(logdet), torch.isnan(logdet_ref))
