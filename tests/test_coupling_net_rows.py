"""The coupling network as one autograd Function over rows (fastflow/ops/cpu/coupling_net.py)
against the same network written here with ``F.conv2d`` and ``F.elu``: the output and the gradient
of every input, in float64 (1e-12) and float32 (1e-5, relative to each tensor's scale), for several
kernel sizes and paddings on a strided, non-square image; each subset of inputs that may need no
gradient; gradcheck; the fallbacks without the extension; CPU autocast; the module that uses it;
and bad input."""

import pytest
import torch
from kernel_checks import autograd_node_names
from torch.nn import functional as F

from fastflow.flows.coupling import CouplingNet2d
from fastflow.ops.cpu import cond_bias_elu, conv_rows
from fastflow.ops.cpu.coupling_net import coupling_net_rows

TOLERANCES = {torch.float64: 1e-12, torch.float32: 1e-5}
NAMES = ("x", "w_in", "w_mid", "bias", "w_out", "b_out")


def network(x, w_in, w_mid, bias, w_out, b_out, padding_in):
    """conv -> ELU -> 1x1 conv + bias per sample -> ELU -> conv with 'same' padding, by F.conv2d."""
    h = F.elu(F.conv2d(x, w_in, padding=padding_in))
    h = F.conv2d(h, w_mid[:, :, None, None])
    h = F.elu(h if bias is None else h + bias[:, :, None, None])
    return F.conv2d(h, w_out, b_out, padding=w_out.shape[2] // 2)


def net_inputs(dtype, k_in=3, k_out=3, with_bias=True, with_b_out=True, batch=2, c_in=3, hidden=7, c_out=4, seed=0):
    """x (a strided view of a 6x5 image), the weights at scales that keep both ELU branches busy."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)

    tensors = {
        "x": randn(batch, 2 * c_in, 6, 5)[:, ::2],
        "w_in": randn(hidden, c_in, k_in, k_in, scale=(c_in * k_in * k_in) ** -0.5),
        "w_mid": randn(hidden, hidden, scale=hidden**-0.5),
        "bias": randn(batch, hidden) if with_bias else None,
        "w_out": randn(c_out, hidden, k_out, k_out, scale=(hidden * k_out * k_out) ** -0.5),
        "b_out": randn(c_out) if with_b_out else None,
    }
    return {n: None if t is None else t.to(dtype) for n, t in tensors.items()}


def outputs_and_grads(fn, tensors, padding_in, wants_grad):
    """fn's output and the gradients of the tensors named in ``wants_grad`` for a fixed probe."""
    leaves = {n: None if t is None else t.detach().clone().requires_grad_(n in wants_grad) for n, t in tensors.items()}
    out = fn(*(leaves[n] for n in NAMES), padding_in)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.dtype)
    inputs = [leaves[n] for n in NAMES if n in wants_grad and leaves[n] is not None]
    return out, dict(
        zip(
            [n for n in NAMES if n in wants_grad and leaves[n] is not None],
            torch.autograd.grad((out * probe).sum(), inputs),
        )
    )


def assert_matches_network(tensors, padding_in, dtype, wants_grad=NAMES):
    out, grads = outputs_and_grads(coupling_net_rows, tensors, padding_in, wants_grad)
    out_ref, grads_ref = outputs_and_grads(network, tensors, padding_in, wants_grad)
    assert out.is_contiguous() and out.dtype == dtype
    assert grads.keys() == grads_ref.keys()
    for name, got, want in [("out", out, out_ref)] + [(n, grads[n], grads_ref[n]) for n in grads]:
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, atol=TOLERANCES[dtype] * scale, rtol=TOLERANCES[dtype], msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k_in, padding_in", [(3, 1), (3, 0), (1, 0), (5, 2)])
@pytest.mark.parametrize("k_out", [1, 3, 5])
def test_matches_conv2d(k_in, padding_in, k_out, dtype):
    """Every kernel offset lands on its own shifted position: an unflipped or transposed kernel, or a
    wrong padding, fails on the non-square image."""
    assert_matches_network(net_inputs(dtype, k_in, k_out), padding_in, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_bias, with_b_out", [(False, True), (True, False), (False, False)])
def test_without_bias_or_output_bias(with_bias, with_b_out, dtype):
    assert_matches_network(net_inputs(dtype, with_bias=with_bias, with_b_out=with_b_out), 1, dtype)


@pytest.mark.parametrize(
    "wants_grad",
    [("w_in", "w_mid", "bias", "w_out", "b_out"), ("w_out", "b_out"), ("bias",), ("x",), ("w_mid",), ("w_out",)],
    ids=lambda names: "+".join(names),
)
def test_gradients_of_any_subset(wants_grad):
    """The backward skips what no input needs (x is data, a frozen layer, ...) and still gets the rest."""
    assert_matches_network(net_inputs(torch.float64), 1, torch.float64, wants_grad)


def test_gradcheck():
    tensors = net_inputs(torch.float64, batch=1, c_in=2, hidden=3, c_out=2)
    leaves = [tensors[n].requires_grad_() for n in NAMES]
    assert torch.autograd.gradcheck(lambda *t: coupling_net_rows(*t, 1), leaves)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_without_the_extension_the_same_through_torch_ops(monkeypatch, dtype):
    """Without the extension's patch and bias + ELU kernels the Function runs F.unfold/F.fold and
    torch's in-place ELU, with the same values and gradients."""
    monkeypatch.setattr(conv_rows, "kernels_loaded", lambda: False)
    monkeypatch.setattr(cond_bias_elu, "kernels_loaded", lambda: False)
    assert_matches_network(net_inputs(dtype), 1, dtype)
    assert_matches_network(net_inputs(dtype, k_in=5, k_out=5, with_bias=False), 2, dtype)


def test_cpu_autocast_runs_the_gemms_in_its_dtype():
    """Under bfloat16 autocast the network agrees with conv2d under autocast to bfloat16 rounding
    (2e-2 of each tensor's scale), its output is bfloat16 as conv2d's is, and every gradient has its
    input's dtype."""
    tensors = net_inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = outputs_and_grads(coupling_net_rows, tensors, 1, NAMES)
        out_ref, grads_ref = outputs_and_grads(network, tensors, 1, NAMES)
    assert out.dtype == out_ref.dtype == torch.bfloat16
    for name, got, want in [("out", out, out_ref)] + [(n, grads[n], grads_ref[n]) for n in grads]:
        assert got.dtype == (torch.bfloat16 if name == "out" else tensors[name].dtype), name
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want.to(got.dtype), atol=2e-2 * scale, rtol=2e-2, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_coupling_net_runs_it_on_the_cpu_backend(dtype):
    """CouplingNet2d on the cpu backend (one CouplingNetRowsFunction node, no conv2d) against the
    same module on the reference backend: output and every parameter's gradient."""
    torch.manual_seed(0)
    net = CouplingNet2d(3, 4, 16, z_dim=5).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 6, 5, 4, dtype=dtype)[:, ::2].requires_grad_()
    z = torch.randn(2, 5, dtype=dtype, requires_grad=True)
    probe = torch.randn(2, 4, 5, 4, dtype=dtype)
    results = {}
    for backend in ("cpu", "reference"):
        net.backend = backend
        out = net(x, z)
        results[backend] = (out, torch.autograd.grad((out * probe).sum(), [x, z, *net.parameters()]))
    net.backend = "cpu"
    nodes = autograd_node_names(net(x, z))
    assert "CouplingNetRowsFunctionBackward" in nodes and "ConvolutionBackward0" not in nodes
    (out, grads), (out_ref, grads_ref) = results["cpu"], results["reference"]
    for got, want in zip((out, *grads), (out_ref, *grads_ref)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, atol=TOLERANCES[dtype] * scale, rtol=TOLERANCES[dtype])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"w_out": torch.zeros(4, 7, 2, 2)}, r"square odd kernel"),
        ({"w_out": torch.zeros(4, 7, 3, 1)}, r"square odd kernel"),
        ({"x": torch.zeros(2, 3, 6)}, r"expects x \[B, C_in, H, W\] and w_in \[Hd, C_in, k, k\]"),
        ({"w_in": torch.zeros(7, 2, 3, 3)}, r"expects x \[B, C_in, H, W\] and w_in \[Hd, C_in, k, k\]"),
        ({"w_mid": torch.zeros(7, 6)}, r"expects w_mid \[7, 7\]"),
        ({"w_out": torch.zeros(4, 6, 3, 3)}, r"w_out \[C_out, 7, k, k\]"),
        ({"bias": torch.zeros(2, 6)}, r"bias must have shape \(2, 7\)"),
    ],
)
def test_bad_input(change, message):
    tensors = {**net_inputs(torch.float32), **change}
    with pytest.raises(ValueError, match=message):
        coupling_net_rows(*(tensors[n] for n in NAMES), 1)


def test_empty_batch():
    tensors = {**net_inputs(torch.float32), "x": torch.zeros(0, 3, 6, 5), "bias": torch.zeros(0, 7)}
    leaves = {n: t.requires_grad_() for n, t in tensors.items()}
    out = coupling_net_rows(*(leaves[n] for n in NAMES), 1)
    assert out.shape == (0, 4, 6, 5)
    out.sum().backward()
    assert leaves["x"].grad.shape == (0, 3, 6, 5) and leaves["bias"].grad.shape == (0, 7)
    assert torch.equal(leaves["w_in"].grad, torch.zeros_like(leaves["w_in"]))


def test_backward_runs_under_vmap():
    """torch.autograd.functional.jacobian(vectorize=True) runs the backward under vmap (as the ELBO
    tests' brute-force log-determinants do): the ELU backwards must not write over a batched
    gradient, for which the in-place kernel has no batching rule. Rows of the Jacobian against a
    loop of plain backwards."""
    tensors = net_inputs(torch.float64, batch=1, c_in=2, hidden=3, c_out=2)
    x = tensors.pop("x").contiguous()
    rest = [tensors[n] for n in NAMES[1:]]
    jac = torch.autograd.functional.jacobian(lambda x: coupling_net_rows(x, *rest, 1).flatten(), x, vectorize=True)
    loop = torch.autograd.functional.jacobian(lambda x: coupling_net_rows(x, *rest, 1).flatten(), x)
    assert jac.abs().max() > 0.1
    torch.testing.assert_close(jac, loop, atol=1e-12, rtol=1e-12)
