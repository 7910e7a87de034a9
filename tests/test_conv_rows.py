"""The row formulation's building blocks (fastflow/ops/conv_rows.py): the 1x1 convolution as one
``mm`` against ``F.conv2d`` (values and gradients in float64 at 1e-12 and float32 at 1e-5 relative to
the output scale, gradcheck, layout), the patch kernels against ``F.unfold``/``F.fold`` and as each
other's adjoint, and bad input. The coupling network built on them: tests/test_coupling_net_rows.py."""

import pytest
import torch
from torch.nn import functional as F

from fastflow.ops import conv_rows
from fastflow.ops.conv_rows import conv1x1_rows, is_channels_last, patches, same_padding, sum_patches, use_rows

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
@pytest.mark.parametrize("channels_last", [True, False])
def test_conv1x1_rows_matches_conv2d(channels_last, dtype):
    h, weight, _ = inputs(3, 8, 5, 4, 1, dtype, channels_last)
    out = assert_matches(lambda h, w: conv1x1_rows(h, w.flatten(1)), lambda h, w: F.conv2d(h, w), [h, weight], dtype)
    assert is_channels_last(out)


def test_conv1x1_rows_gradcheck():
    h, weight, _ = inputs(1, 3, 2, 3, 1, torch.float64, channels_last=True)
    assert torch.autograd.gradcheck(lambda h, w: conv1x1_rows(h, w.flatten(1)), (h, weight))


@pytest.mark.parametrize("weight_shape", [(2, 3, 3, 1), (2, 3, 2, 2), (2, 3, 3), (2, 3, 4, 4)])
def test_same_padding_refuses_what_is_not_a_square_odd_kernel(weight_shape):
    assert same_padding(torch.zeros(2, 3, 5, 5)) == 2
    with pytest.raises(ValueError, match=r"square odd kernel"):
        same_padding(torch.zeros(weight_shape))


def test_rows_are_the_cpu_torch_backend_only():
    x = torch.zeros(1, 2, 3, 3)
    assert use_rows("torch", x) and use_rows("auto", x)
    assert not use_rows("reference", x)
    assert not is_channels_last(torch.zeros(2, 1, 3, 3).contiguous(memory_format=torch.channels_last))


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


@pytest.mark.parametrize("patch_kernels", [True, False])
@pytest.mark.parametrize("k, padding", [(3, 1), (3, 0), (5, 2)])
def test_sum_patches_is_the_adjoint_of_patches(monkeypatch, patch_kernels, k, padding):
    """<patches(x), r> = <x, sum_patches(r)> in float64 (the identity the coupling network's backward
    rests on), with the extension's kernels and through F.unfold/F.fold."""
    if patch_kernels and not conv_rows._patch_kernels_loaded():
        pytest.skip("the C++ extension is not built")
    monkeypatch.setattr(conv_rows, "_patch_kernels_loaded", lambda: patch_kernels)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, 7, generator=gen, dtype=torch.float64)[:, ::2]
    rows = torch.randn(patches(x, k, padding).shape, generator=gen, dtype=torch.float64)
    summed = sum_patches(rows, 2, (5, 7), k, padding)
    assert summed.shape == x.shape and summed.is_contiguous()
    torch.testing.assert_close((patches(x, k, padding) * rows).sum(), (x * summed).sum(), atol=1e-12, rtol=1e-12)


@needs_patch_kernels
def test_patch_kernels_bad_input():
    with pytest.raises(ValueError, match=r"expects x of shape \[B, C, H, W\]"):
        torch.ops.fastflow.im2col_rows(torch.zeros(2, 3, 4), 3, 1)
    with pytest.raises(ValueError, match="does not fit"):
        torch.ops.fastflow.im2col_rows(torch.zeros(1, 1, 2, 2), 5, 0)
    with pytest.raises(ValueError, match=r"expects contiguous rows"):
        torch.ops.fastflow.col2im_rows(torch.zeros(7, 18), 3, 4, 3, 1)
