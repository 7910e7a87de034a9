"""An ActNorm folded into the fused coupling (``affine_coupling(..., actnorm=(log_scale, bias))``), on the
Triton kernels (the interpreter here) and the C++ CPU kernels, and the flows that fold it.

The independent computation is the plain-PyTorch coupling followed by ``out * exp(log_scale) + bias``
written out here, with logdet ``+ H W sum(log_scale)``. Tolerances: float64 1e-10, float32 1e-5
(absolute and relative); kernel buffers start as NaN, so a channel the fold forgets to write fails.
The "triton" cases run on the GPU when there is one (benchmarks/device/gpu_check.py lists this file).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_checks import autograd_node_names, poison_outputs  # noqa: E402

import fastflow.kernels.affine_coupling as kernels  # noqa: E402
from fastflow.flows import ActNorm, AffineCoupling, FlowSequence, SplitPrior, build_prior_flow, refined_step  # noqa: E402
from fastflow.flows.refined import TailActNorm  # noqa: E402
from fastflow.ops.affine_coupling import (  # noqa: E402
    CouplingScale,
    affine_coupling,
    affine_coupling_inverse,
    affine_coupling_inverse_reference,
    affine_coupling_reference,
)

BACKENDS = ["triton", "cpu"]  # the Triton kernels (on the GPU when there is one) and the C++ CPU kernels
GPU = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [(torch.float64, 1e-10), (torch.float32, 1e-5)]
SCALES = {
    "tanh": CouplingScale("tanh"),
    "tanh_alpha": CouplingScale("tanh", alpha=0.6),
    "sigmoid_shift_first": CouplingScale("sigmoid"),
    "exp_clamp_reciprocal": CouplingScale("exp", clamp=2.0, reciprocal=True),
    "additive": CouplingScale("additive"),
}
PATTERNS = [(5, "continuous", "up"), (5, "continuous", "down"), (4, "skip", "up"), (4, "skip", "down")]


@pytest.fixture(autouse=True)
def poison(monkeypatch, poisoned_empty):
    poison_outputs(monkeypatch, kernels)


def device(backend: str) -> str:
    return GPU if backend == "triton" else "cpu"


def make_inputs(channels, scale, dtype, batch=2, spatial=(3, 2), seed=0, device="cpu"):
    """x ``[B, C, *S]``, packed params ``[B, 2 Cb, *S]`` (``[B, Cb, *S]`` additive), log_scale and bias
    ``[C]``, all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    cb = channels // 2
    params = (batch, cb * (1 if scale.additive else 2), *spatial)
    shapes = [(batch, channels, *spatial), params, (channels,), (channels,)]
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_() for s in shapes]


def coupling_then_actnorm(x, params, log_scale, bias, split, order, scale, shift_first, inverse):
    """The independent computation: the plain-PyTorch coupling, then the ActNorm written out."""
    cb = x.shape[1] // 2
    mu, u = (params, None) if scale.additive else (params[:, :cb], params[:, cb:])
    ref = affine_coupling_inverse_reference if inverse else affine_coupling_reference
    out, logdet = ref(x, mu, u, split, order, scale=scale, shift_first=shift_first)
    view = (1, -1, *([1] * (x.dim() - 2)))
    pixels = x[0, 0].numel()
    return out * log_scale.exp().view(view) + bias.view(view), logdet + pixels * log_scale.sum()


def outputs_and_grads(fn, inputs):
    out, logdet = fn(*inputs)
    gen = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    w_logdet = torch.randn(logdet.shape, generator=gen, dtype=torch.float64).to(logdet.dtype)
    grads = torch.autograd.grad((out * w_out).sum() + (logdet * w_logdet).sum(), inputs)
    return (out, logdet, *grads)


def fused(backend, split, order, scale, shift_first, inverse):
    op = affine_coupling_inverse if inverse else affine_coupling

    def fn(x, params, log_scale, bias):
        return op(
            x,
            split=split,
            order=order,
            scale=scale,
            shift_first=shift_first,
            params=params,
            backend=backend,
            actnorm=(log_scale, bias),
        )

    return fn


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("scale_name", list(SCALES))
@pytest.mark.parametrize("channels, split, order", PATTERNS)
@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_matches_coupling_then_actnorm(backend, dtype, tol, channels, split, order, scale_name, inverse):
    """Output, logdet and the gradients of x, params, log_scale and bias."""
    scale = SCALES[scale_name]
    shift_first = scale_name == "sigmoid_shift_first"
    inputs = make_inputs(channels, scale, dtype, device=device(backend))
    got = outputs_and_grads(fused(backend, split, order, scale, shift_first, inverse), inputs)
    want = outputs_and_grads(
        lambda *t: coupling_then_actnorm(*t, split, order, scale, shift_first, inverse),
        [t.detach().double().requires_grad_() for t in inputs],
    )
    for name, g, w in zip(["out", "logdet", "d x", "d params", "d log_scale", "d bias"], got, want):
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_runs_in_the_fused_function(backend):
    """The output comes straight out of the fused autograd Function: no multiply or add of an
    unfolded ActNorm (a silent fall-back to the plain-PyTorch composition would pass the comparisons)."""
    scale = SCALES["tanh"]
    x, params, log_scale, bias = make_inputs(4, scale, torch.float32, device=device(backend))
    y, _ = fused(backend, "skip", "up", scale, False, False)(x, params, log_scale, bias)
    names = autograd_node_names(y)
    assert "AffineCouplingFunctionBackward" in names
    assert not names & {"MulBackward0", "AddBackward0", "CatBackward0"}, names


@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_on_vectors_and_several_blocks_per_channel(backend):
    """``[B, C]`` (one pixel per channel, the z-prior's flow) and 80 x 60 planes (several tiles per
    Triton program and several programs per channel, whose partial sums must all count)."""
    scale = SCALES["tanh_alpha"]
    for spatial in [(), (80, 60)]:
        inputs = make_inputs(6, scale, torch.float64, batch=3, spatial=spatial, device=device(backend))
        got = outputs_and_grads(fused(backend, "skip", "up", scale, False, False), inputs)
        want = outputs_and_grads(lambda *t: coupling_then_actnorm(*t, "skip", "up", scale, False, False), inputs)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_gradcheck(backend, inverse):
    scale = SCALES["tanh_alpha"]
    inputs = make_inputs(4, scale, torch.float64, batch=2, spatial=(2, 2), device=device(backend))
    assert torch.autograd.gradcheck(fused(backend, "continuous", "down", scale, False, inverse), inputs)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_in_place_writes_every_channel(backend, inverse):
    """In place, the fold writes all channels (the ActNorm changes the conditioning ones too) and
    gives the out-of-place result."""
    scale = SCALES["tanh"]
    x, params, log_scale, bias = (t.detach() for t in make_inputs(4, scale, torch.float32, device=device(backend)))
    op = affine_coupling_inverse if inverse else affine_coupling
    kwargs = dict(split="skip", order="down", params=params, backend=backend, actnorm=(log_scale, bias))
    with torch.no_grad():
        want, logdet_want = op(x, **kwargs)
        target = x.clone()
        got, logdet = op(target, inplace=True, **kwargs)
    assert got.data_ptr() == target.data_ptr()
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(logdet, logdet_want, atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_empty_batch(backend):
    scale = SCALES["tanh"]
    x, params, log_scale, bias = make_inputs(4, scale, torch.float32, batch=0, device=device(backend))
    y, logdet = fused(backend, "continuous", "up", scale, False, False)(x, params, log_scale, bias)
    assert y.shape == x.shape and logdet.shape == (0,)
    d_log_scale, d_bias = torch.autograd.grad(y.sum() + logdet.sum(), (log_scale, bias))
    assert not d_bias.any() and not d_log_scale.any()


@pytest.mark.parametrize("bad", [(3,), (4, 1)])
@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_fold_bad_shape_raises(backend, bad):
    x = torch.zeros(2, 4, 3, 3, device=device(backend))
    with pytest.raises(ValueError, match=r"actnorm log_scale must have shape \(4,\)"):
        affine_coupling(x, params=torch.zeros_like(x), backend=backend, actnorm=(x.new_zeros(bad), x.new_zeros(4)))


# ---- flows ----


def perturbed(flow: torch.nn.Module, backend: str) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    for m in flow.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return flow


def spy_actnorms(monkeypatch) -> list[str]:
    """Records each ActNorm and TailActNorm forward call (an unfolded ActNorm)."""
    calls: list[str] = []
    for cls in (ActNorm, TailActNorm):
        original = cls.forward

        def recorded(self, x, cond=None, original=original, name=cls.__name__):
            calls.append(name)
            return original(self, x, cond)

        monkeypatch.setattr(cls, "forward", recorded)
    return calls


# name -> (factory, input shape, z_dim, ActNorm calls left when folded: the prior's first layer)
FLOWS = {
    "refined_step": (lambda: refined_step(4, 6, 3, "affine", 0.8), (2, 4, 3, 3), 3, 0),
    "split_prior": (lambda: SplitPrior(8, 4, 6, 3, "affine", 0.8), (2, 8, 2, 2), 3, 0),
    "prior_flow": (lambda: build_prior_flow(6, 2, 8), (3, 6), 0, 1),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(FLOWS))
def test_sequences_fold_actnorms_into_couplings(monkeypatch, name, backend):
    """The folded flow computes what the reference backend (the paper's way, nothing folded) computes,
    with gradients, and runs no ActNorm of its own but those that follow no coupling."""
    factory, shape, z_dim, unfolded = FLOWS[name]
    torch.manual_seed(0)
    flow = perturbed(factory().double(), backend).to(device(backend))
    reference = perturbed(factory().double(), "reference").to(device(backend))
    reference.load_state_dict(flow.state_dict())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device(backend)).requires_grad_()
    z = torch.randn(shape[0], z_dim, generator=gen, dtype=torch.float64).to(x.device) if z_dim else None
    calls = spy_actnorms(monkeypatch)

    def run(f):
        y, logdet = f(x, z)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view(y.shape)).sum()
        loss = loss + logdet.sum()
        return y, logdet, *torch.autograd.grad(loss, [x, *f.parameters()])

    got = run(flow)
    folded_calls = len(calls)
    want = run(reference)
    assert folded_calls == unfolded and len(calls) - folded_calls > unfolded
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
    x_back, _ = flow.inverse(got[0].detach(), z)
    torch.testing.assert_close(x_back, x.detach(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("hooked", [2, 3])
def test_hooked_pairs_are_not_folded(hooked):
    """A forward hook on the coupling or on the ActNorm (locate_nonfinite hooks every module) keeps
    both calls of their own, so the hook sees the layer's own output."""
    step = perturbed(refined_step(4, 6, 0, "affine", 1.0).double(), "cpu")
    seen = []
    step.layers[hooked].register_forward_hook(lambda module, inputs, output: seen.append(output[0]))
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    step(x)
    with torch.no_grad():
        h = x
        for layer in step.layers[:hooked]:
            h, _ = layer(h)
        want, _ = step.layers[hooked](h)
    assert len(seen) == 2 and torch.allclose(seen[0], want, atol=1e-12, rtol=0)


def test_reference_backend_folds_nothing(monkeypatch):
    step = perturbed(FlowSequence([AffineCoupling(4, torch.nn.Conv2d(2, 4, 1)), ActNorm(4)]).double(), "reference")
    calls = spy_actnorms(monkeypatch)
    step(torch.randn(2, 4, 3, 3, dtype=torch.float64))
    assert calls == ["ActNorm"]


@pytest.mark.parametrize("inplace", [False, True])
def test_fold_traces_under_torch_compile(inplace):
    """torch.compile (aot_eager, fullgraph) of the C++ kernels' fold, forward + backward and the
    in-place form, gives the eager results: the operators' fake implementations return the affine
    gradient's shape."""
    scale = SCALES["tanh_alpha"]
    inputs = make_inputs(4, scale, torch.float32)
    op = fused("cpu", "skip", "up", scale, False, False)
    if inplace:
        x, params, log_scale, bias = (t.detach() for t in inputs)

        def write(target):
            with torch.no_grad():
                return affine_coupling(
                    target, params=params, split="skip", backend="cpu", actnorm=(log_scale, bias), inplace=True
                )

        want = write(x.clone())
        got = torch.compile(write, backend="aot_eager", fullgraph=True)(x.clone())
    else:
        want = outputs_and_grads(op, inputs)
        got = torch.compile(lambda *t: outputs_and_grads(op, t), backend="aot_eager")(*inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
