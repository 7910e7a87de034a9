"""Every invertible layer, in float64: exact inverse, log-determinant against a brute-force Jacobian,
gradcheck with and without the condition z, and the data-dependent init.

Tolerances (float64): inverse round trip 1e-10 absolute; logdet against log|det J| 1e-8 absolute;
gradcheck at its defaults (eps 1e-6, atol 1e-5, rtol 1e-3).
"""

from __future__ import annotations

import pytest
import torch

from fastflow.flows import (
    ActNorm,
    ActNormConv1x1,
    AffineCoupling,
    Flow,
    FlowSequence,
    GlowCoupling,
    InvertibleConv1x1,
    InvertibleLinear,
    LUConv1x1,
    SplitPrior,
    build_glow,
    build_prior_flow,
    build_refined_glow,
    image_coupling,
    refined_step,
    squeeze,
    unsqueeze,
    vector_coupling,
)
from fastflow.ops.affine_coupling import CouplingScale

SPLITS = [("continuous", "up"), ("continuous", "down"), ("skip", "up"), ("skip", "down")]


def perturb(layer: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init so that identities (zero-init couplings) are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def make_cases() -> list[tuple[str, callable, tuple, int]]:
    """(name, layer factory, input shape, z_dim) for every layer kind."""
    cases = [
        ("actnorm_image", lambda: ActNorm(4), (2, 4, 3, 3), 0),
        ("actnorm_vector", lambda: ActNorm(6), (3, 6), 0),
        ("conv1x1", lambda: InvertibleConv1x1(4), (2, 4, 3, 3), 0),
        ("linear", lambda: InvertibleLinear(6), (3, 6), 0),
        ("actnorm_conv1x1", lambda: ActNormConv1x1(5), (2, 5, 2, 3), 0),
        ("actnorm_conv1x1_lu", lambda: ActNormConv1x1(5, lu=True), (2, 5, 2, 3), 0),
        (
            "coupling_any_net_exp_clamp_interleaved_reverse",
            lambda: AffineCoupling(
                5,
                torch.nn.Conv2d(2, 6, 3, padding=1),
                "continuous",
                "down",
                3,
                scale=CouplingScale("exp", clamp=2.0),
                layout="interleaved",
                reverse=True,
            ),
            (2, 5, 3, 2),
            0,
        ),
        (
            "coupling_any_net_sigmoid_shift_first",
            lambda: AffineCoupling(
                4, torch.nn.Conv2d(2, 4, 1), "skip", "up", scale="sigmoid", shift_first=True, layout="scale_shift"
            ),
            (2, 4, 3, 2),
            0,
        ),
        ("vector_coupling", lambda: vector_coupling(6, 8, "skip", "up"), (3, 6), 0),
        ("prior_flow", lambda: build_prior_flow(6, 1, 8), (3, 6), 0),
        ("glow_lu_conv", lambda: LUConv1x1(4), (2, 4, 3, 3), 0),
        ("glow_coupling", lambda: GlowCoupling(4, 8), (2, 4, 3, 3), 0),
        ("glow_flow", lambda: build_glow(3, 2, [1, 1], [8, 8]), (2, 3, 4, 4), 0),
    ]
    for z_dim in (0, 3):
        for channels in (4, 5):
            for split, order in SPLITS:
                for transform, alpha in (("affine", 1.0), ("affine", 0.5), ("additive", 1.0)):
                    cases.append(
                        (
                            f"coupling_{split}_{order}_c{channels}_{transform}_a{alpha}_z{z_dim}",
                            lambda c=channels, s=split, o=order, t=transform, a=alpha, zd=z_dim: image_coupling(
                                c, 6, zd, s, o, transform=t, alpha=a
                            ),
                            (2, channels, 3, 2),
                            z_dim,
                        )
                    )
        cases += [
            (f"refined_step_z{z_dim}", lambda zd=z_dim: refined_step(4, 6, zd, "affine", 1.0), (2, 4, 2, 2), z_dim),
            (f"split_prior_z{z_dim}", lambda zd=z_dim: SplitPrior(8, 4, 6, zd, "affine", 1.0), (2, 8, 2, 2), z_dim),
            (
                f"refined_glow_z{z_dim}",
                lambda zd=z_dim: build_refined_glow(3, 3, [1, [1, 1], 1], [4, 6, 6], [4], z_dim=zd),
                (2, 3, 4, 4),
                z_dim,
            ),
        ]
    return cases


CASES = make_cases()
IDS = [c[0] for c in CASES]


def build(case: tuple, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]:
    _, factory, shape, z_dim = case
    torch.manual_seed(seed)
    layer = perturb(factory().double(), seed=seed)
    x = torch.randn(shape, dtype=torch.float64)
    z = torch.randn(shape[0], z_dim, dtype=torch.float64) if z_dim else None
    return layer, x, z


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_inverse_round_trip(case: tuple) -> None:
    layer, x, z = build(case)
    y, logdet = layer(x, z)
    assert y.shape == x.shape and logdet.shape == (x.shape[0],)
    x_back, logdet_inv = layer.inverse(y, z)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(logdet_inv, -logdet, atol=1e-10, rtol=1e-12)


def brute_force_logdet(layer: torch.nn.Module, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """log|det dy/dx| per sample from the full autograd Jacobian of the flattened map."""
    out = []
    for i in range(x.shape[0]):
        zi = z[i : i + 1] if z is not None else None

        def f(flat: torch.Tensor, i: int = i, zi: torch.Tensor | None = zi) -> torch.Tensor:
            return layer(flat.view(1, *x.shape[1:]), zi)[0].flatten()

        jac = torch.autograd.functional.jacobian(f, x[i].flatten())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_logdet_matches_jacobian(case: tuple) -> None:
    layer, x, z = build(case, seed=1)
    _, logdet = layer(x, z)
    torch.testing.assert_close(logdet, brute_force_logdet(layer, x, z), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck(case: tuple) -> None:
    layer, x, z = build(case, seed=2)
    inputs = (x.requires_grad_(),) + ((z.requires_grad_(),) if z is not None else ())

    def f(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return layer(args[0], args[1] if len(args) > 1 else None)

    assert torch.autograd.gradcheck(f, inputs)
    if z is not None:  # the gradient must actually reach z
        y, logdet = layer(x, z)
        (y.sum() + logdet.sum()).backward()
        assert z.grad is not None and z.grad.abs().sum() > 0


def test_parameter_gradcheck_refined_step() -> None:
    """Gradients with respect to every parameter of a refined step (float64, with z)."""
    layer = perturb(refined_step(4, 6, 3, "affine", 1.0).double())
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    z = torch.randn(2, 3, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def f(*ps: torch.Tensor) -> torch.Tensor:
        y, logdet = torch.func.functional_call(layer, dict(zip(names, ps)), (x, z))
        return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + logdet.sum()

    assert torch.autograd.gradcheck(f, params)


def test_actnorm_init_normalises() -> None:
    x = torch.randn(64, 5, 4, 4) * torch.tensor([0.1, 1, 3, 10, 0.5]).view(1, 5, 1, 1) + 7
    layer = ActNorm(5)
    y, _ = layer.initialize(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(5), atol=1e-4, rtol=0)
    vec = ActNorm(3)
    yv, _ = vec.initialize(torch.randn(100, 3) * 4 - 2)
    torch.testing.assert_close(yv.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(yv.std(0), torch.ones(3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("split,order", SPLITS)
@pytest.mark.parametrize("z_dim", [0, 3])
def test_coupling_starts_as_identity(split: str, order: str, z_dim: int) -> None:
    layer = image_coupling(6, 8, z_dim, split, order)
    x = torch.randn(2, 6, 3, 3)
    z = torch.randn(2, z_dim) if z_dim else None
    y, logdet = layer(x, z)
    torch.testing.assert_close(y, x, atol=0, rtol=0)
    torch.testing.assert_close(logdet, torch.zeros(2), atol=0, rtol=0)


@pytest.mark.parametrize(
    "split,order,expected",
    [
        ("continuous", "up", [3, 4, 5]),
        ("continuous", "down", [0, 1, 2]),
        ("skip", "up", [1, 3, 5]),
        ("skip", "down", [0, 2, 4]),
    ],
)
def test_coupling_transforms_the_right_channels(split: str, order: str, expected: list[int]) -> None:
    layer = perturb(image_coupling(6, 8, 0, split, order))
    x = torch.randn(2, 6, 3, 3)
    y, _ = layer(x)
    changed = [c for c in range(6) if not torch.equal(y[:, c], x[:, c])]
    assert changed == expected


def test_odd_skip_split_becomes_continuous() -> None:
    layer = image_coupling(9, 8, 0, "skip", "up")
    assert layer.split == "continuous" and layer.num_transformed == 4


def test_squeeze_layout_and_inverse() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    s = squeeze(x)
    assert s.shape == (2, 12, 2, 2)
    # channel (i * 2 + j) * C + c holds pixel (2h + i, 2w + j) of channel c
    assert s[0, (1 * 2 + 0) * 3 + 2, 1, 0] == x[0, 2, 3, 0]
    assert s[1, (0 * 2 + 1) * 3 + 1, 0, 1] == x[1, 1, 0, 3]
    torch.testing.assert_close(unsqueeze(s), x, atol=0, rtol=0)
    with pytest.raises(ValueError, match="even height and width"):
        squeeze(torch.zeros(1, 3, 5, 4))


def test_wrong_channel_count_is_reported() -> None:
    with pytest.raises(ValueError, match=r"\[B, 4, \.\.\.\]"):
        ActNorm(4)(torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        InvertibleConv1x1(4)(torch.zeros(2, 5, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        InvertibleConv1x1(4)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        InvertibleLinear(4)(torch.zeros(2, 4, 1, 1))
    with pytest.raises(ValueError, match=r"\[B, 6, \.\.\.\]"):
        image_coupling(6, 8, 0, "skip", "up")(torch.zeros(2, 4, 2, 2))


def test_inverse_follows_weight_updates() -> None:
    """No stale inverse: after an optimiser step the inverse uses the new weight."""
    layer = InvertibleConv1x1(4).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    y, logdet = layer(x)
    (y.pow(2).sum() - logdet.sum()).backward()
    opt.step()
    y2, _ = layer(x)
    torch.testing.assert_close(layer.inverse(y2)[0], x, atol=1e-10, rtol=0)


def test_locate_nonfinite_names_the_layer() -> None:
    from fastflow.flows.debug import NonFiniteError, locate_nonfinite

    flow = build_refined_glow(3, 3, [1, [1, 1], 1], [4, 6, 6], [4])
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        flow.child.stage_steps[0].layers[0].layers[3].log_scale.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=r"child\.stage_steps\.0\.layers\.0\.layers\.3 \(ActNorm\)"):
        with locate_nonfinite(flow):
            flow(x)
    flow(torch.randn(2, 3, 4, 4))  # the hooks are gone after the block


class ViewOfInput(Flow):
    """A layer that returns a view of its input (as a permutation written with views might)."""

    def forward(self, x, cond=None):
        return x.view(x.shape), x.new_zeros(x.shape[0])

    def inverse(self, y, cond=None):
        return y.view(y.shape), y.new_zeros(y.shape[0])


def spy_in_place(monkeypatch) -> list[bool]:
    """Records the ``inplace`` argument of every coupling call."""
    calls: list[bool] = []
    transform = AffineCoupling._transform

    def recorded(self, x, params, generation, inplace=False, actnorm=None):
        calls.append(inplace)
        return transform(self, x, params, generation, inplace, actnorm)

    monkeypatch.setattr(AffineCoupling, "_transform", recorded)
    return calls


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_no_grad_sequences_run_couplings_in_place(monkeypatch, backend: str) -> None:
    """Under no_grad a refined step's couplings after the first layer write over their input, with the
    results of the out-of-place step; the step's own input is never written."""
    step = perturb(refined_step(4, 8, 3, "affine", 0.8)).double()
    for module in step.modules():
        if hasattr(module, "backend"):
            module.backend = backend
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    z = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    y_want, ld_want = step(x, z)  # autograd on: out of place
    x_want, ld_inv_want = step.inverse(y_want.detach(), z)
    calls = spy_in_place(monkeypatch)
    x_before, y_before = x.clone(), y_want.detach().clone()
    with torch.no_grad():
        y, ld = step(x, z)
        x_back, ld_inv = step.inverse(y_before, z)
    assert calls == [True] * 4 + [False, True, True, True]  # forward: all four; inverse: not the first
    torch.testing.assert_close(y, y_want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ld, ld_want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(x_back, x_want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ld_inv, ld_inv_want, atol=1e-12, rtol=1e-12)
    assert torch.equal(x, x_before) and torch.equal(y_want.detach(), y_before)


def test_a_coupling_never_writes_into_the_sequences_input(monkeypatch) -> None:
    """A coupling after a layer that returns a view of the sequence's input runs out of place; one after
    a view of a tensor the sequence made runs in place."""
    coupling = perturb(image_coupling(4, 8, 0, "skip", "up")).double()
    seq = FlowSequence([ViewOfInput(), coupling, ViewOfInput(), coupling])
    calls = spy_in_place(monkeypatch)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    x_before = x.clone()
    with torch.no_grad():
        y, _ = seq(x)
        seq.inverse(y.clone())
    assert calls == [False, True, False, True] and torch.equal(x, x_before)
