"""The convolutions as row GEMMs (fastflow/ops/conv_rows.py) against ``F.conv2d``: values and every
gradient in float64 (1e-12) and float32 (1e-5 relative to the output scale), gradcheck, the layouts
they promise, the coupling network built on them, and their bad input."""

import pytest
import torch
from kernel_checks import autograd_node_names
from torch.nn import functional as F

from fastflow.flows.coupling import CouplingNet2d
from fastflow.ops import conv_rows
from fastflow.ops.conv_rows import conv1x1_rows, conv_col2im, conv_im2col, is_channels_last, use_rows

TOLERANCES = {torch.float64: 1e-12, torch.float32: 1e-5}


def inputs(batch, c_in, c_out, size, k, dtype, channels_last=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2 * c_in, size, size + 1, generator=gen, dtype=torch.float64)[:, ::2]  # a strided view
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, k, k, generator=gen, dtype=torch.float64) / (c_in * k * k) ** 0.5
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (x, weight, bias)]


def value_and_grads(fn, tensors, seed=1):
    out = fn(*tensors)
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    return out, torch.autograd.grad((out * probe).sum(), tensors)


def assert_matches(fn, reference, tensors, dtype):
    out, grads = value_and_grads(fn, tensors)
    out_ref, grads_ref = value_and_grads(reference, tensors)
    for got, want in zip((out, *grads), (out_ref, *grads_ref)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, atol=TOLERANCES[dtype] * scale, rtol=TOLERANCES[dtype])
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k, padding", [(3, 1), (3, 0), (1, 0), (5, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_im2col_matches_conv2d(k, padding, with_bias, dtype):
    x, weight, bias = inputs(2, 3, 7, 6, k, dtype)
    tensors = [x, weight, bias] if with_bias else [x, weight]
    out = assert_matches(
        lambda *t: conv_im2col(*t, padding=padding), lambda *t: F.conv2d(*t, padding=padding), tensors, dtype
    )
    assert is_channels_last(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k, padding", [(3, 1), (1, 0), (5, 2)])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_col2im_matches_conv2d(k, padding, channels_last, with_bias, dtype):
    """Every kernel offset lands on its own shifted position (an unflipped or transposed kernel, or a
    wrong padding, fails on the non-square 6x7 image)."""
    h, weight, bias = inputs(2, 9, 4, 6, k, dtype, channels_last)
    tensors = [h, weight, bias] if with_bias else [h, weight]
    out = assert_matches(
        lambda *t: conv_col2im(*t, padding=padding), lambda *t: F.conv2d(*t, padding=padding), tensors, dtype
    )
    assert out.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [True, False])
def test_conv1x1_rows_matches_conv2d(channels_last, dtype):
    h, weight, _ = inputs(3, 8, 5, 4, 1, dtype, channels_last)
    out = assert_matches(lambda h, w: conv1x1_rows(h, w.flatten(1)), lambda h, w: F.conv2d(h, w), [h, weight], dtype)
    assert is_channels_last(out)


def test_gradcheck():
    x, weight, bias = inputs(1, 2, 3, 3, 3, torch.float64)
    assert torch.autograd.gradcheck(lambda *t: conv_im2col(*t, padding=1), (x, weight, bias))
    h, weight, bias = inputs(1, 3, 2, 3, 3, torch.float64, channels_last=True)
    assert torch.autograd.gradcheck(lambda *t: conv_col2im(*t, padding=1), (h, weight, bias))
    assert torch.autograd.gradcheck(lambda h, w: conv1x1_rows(h, w.flatten(1)), (h, weight[:, :, 1, 1]))


@pytest.mark.parametrize("weight_shape, padding", [((2, 3, 3, 3), 0), ((2, 3, 3, 1), 1), ((2, 3, 2, 2), 1)])
def test_col2im_refuses_what_is_not_same_padding(weight_shape, padding):
    with pytest.raises(ValueError, match=r"square odd kernel .* 'same' padding"):
        conv_col2im(torch.zeros(1, 3, 4, 4), torch.zeros(weight_shape), padding=padding)


def test_rows_are_the_cpu_torch_backend_only():
    x = torch.zeros(1, 2, 3, 3)
    assert use_rows("torch", x) and use_rows("auto", x)
    assert not use_rows("reference", x)
    assert not is_channels_last(torch.zeros(2, 1, 3, 3).contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_coupling_net_rows_against_conv2d(dtype):
    """The CPU torch backend's coupling network (row GEMMs, channels-last inside) against the same
    network on the reference backend (``conv2d``, ``F.elu``): output and every parameter's gradient."""
    torch.manual_seed(0)
    net = CouplingNet2d(3, 4, 16, z_dim=5).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 6, 5, 4, dtype=dtype)[:, ::2].requires_grad_()
    z = torch.randn(2, 5, dtype=dtype, requires_grad=True)
    results = {}
    for backend in ("torch", "reference"):
        net.backend = backend
        results[backend] = value_and_grads(lambda x, z, *p: net(x, z), [x, z, *net.parameters()])
    (out, grads), (out_ref, grads_ref) = results["torch"], results["reference"]
    assert out.is_contiguous()
    net.backend = "torch"  # the torch backend's graph holds the three row GEMMs, not conv2d
    assert {
        "Im2colConvFunctionBackward",
        "Conv1x1RowsFunctionBackward",
        "Col2imRowsFunctionBackward",
    } <= autograd_node_names(net(x, z))
    assert "ConvolutionBackward0" not in autograd_node_names(net(x, z))
    for got, want in zip((out, *grads), (out_ref, *grads_ref)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, atol=TOLERANCES[dtype] * scale, rtol=TOLERANCES[dtype])


# ---- the extension's patch kernels (csrc/patch_rows.cpp) and the fallback without them ----

needs_patch_kernels = pytest.mark.skipif(not conv_rows._patch_kernels_loaded(), reason="the C++ extension is not built")


@needs_patch_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k, padding", [(3, 1), (3, 0), (1, 0), (5, 2), (2, 1)])
def test_patch_kernels_match_unfold_and_fold(k, padding, dtype):
    """im2col_rows is F.unfold laid out as rows (exactly: it only moves values), col2im_rows is F.fold
    of such rows (a sum: float rounding apart), on a strided, non-square image."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, 7, generator=gen).to(dtype)[:, ::2]
    want = F.unfold(x.float(), k, padding=padding).transpose(1, 2).reshape(-1, 3 * k * k).to(dtype)
    assert torch.equal(torch.ops.fastflow.im2col_rows(x, k, padding), want)
    out_h, out_w = 5 + 2 * padding - k + 1, 7 + 2 * padding - k + 1
    rows = torch.randn(2 * out_h * out_w, 3 * k * k, generator=gen).to(dtype)
    want = F.fold(rows.double().view(2, out_h * out_w, -1).transpose(1, 2), (5, 7), k, padding=padding)
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    got = torch.ops.fastflow.col2im_rows(rows, 5, 7, k, padding)
    torch.testing.assert_close(got.double(), want, atol=tolerance * 10, rtol=tolerance)


@needs_patch_kernels
def test_patch_kernels_gradcheck_and_bad_input():
    rows = torch.randn(2 * 3 * 4, 2 * 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: conv_rows.Col2imRowsFunction.apply(r, 2, (3, 4), 3, 1), (rows,))
    with pytest.raises(ValueError, match=r"expects x of shape \[B, C, H, W\]"):
        torch.ops.fastflow.im2col_rows(torch.zeros(2, 3, 4), 3, 1)
    with pytest.raises(ValueError, match="does not fit"):
        torch.ops.fastflow.im2col_rows(torch.zeros(1, 1, 2, 2), 5, 0)
    with pytest.raises(ValueError, match=r"expects contiguous rows"):
        torch.ops.fastflow.col2im_rows(torch.zeros(7, 18), 3, 4, 3, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_without_patch_kernels_the_same_through_unfold_and_fold(monkeypatch, dtype):
    """Without the extension the row formulation falls back on F.unfold/F.fold, with the same values."""
    monkeypatch.setattr(conv_rows, "_patch_kernels_loaded", lambda: False)
    x, weight, bias = inputs(2, 3, 7, 6, 3, dtype)
    assert_matches(lambda *t: conv_im2col(*t, padding=1), lambda *t: F.conv2d(*t, padding=1), [x, weight, bias], dtype)
    h, weight, bias = inputs(2, 9, 4, 6, 3, dtype, channels_last=True)
    assert_matches(lambda *t: conv_col2im(*t, padding=1), lambda *t: F.conv2d(*t, padding=1), [h, weight, bias], dtype)
