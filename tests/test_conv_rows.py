"""The row formulation's building blocks (fastflow/ops/cpu/conv_rows.py): the patch kernels against
``F.unfold``/``F.fold`` and as each other's adjoint (values in float64 at 1e-12 and float32 at 1e-5
relative to the output scale), the selection of the row formulation, and bad input. The coupling
network built on them: tests/test_coupling_net_rows.py."""

import pytest
import torch
from torch.nn import functional as F

from fastflow.ops import backends
from fastflow.ops.cpu import conv_rows
from fastflow.ops.cpu.conv_rows import patches, same_padding, sum_patches
from fastflow.ops.cpu.storage import is_channels_last


@pytest.mark.parametrize("weight_shape", [(2, 3, 3, 1), (2, 3, 2, 2), (2, 3, 3), (2, 3, 4, 4)])
def test_same_padding_refuses_what_is_not_a_square_odd_kernel(weight_shape):
    assert same_padding(torch.zeros(2, 3, 5, 5)) == 2
    with pytest.raises(ValueError, match=r"square odd kernel"):
        same_padding(torch.zeros(weight_shape))


def test_rows_are_the_cpu_backend_only():
    x = torch.zeros(1, 2, 3, 3)
    assert backends.select("coupling_net", "cpu", x) == backends.select("coupling_net", "auto", x) == "cpu"
    assert backends.select("coupling_net", "reference", x) == "reference"
    assert not is_channels_last(torch.zeros(2, 1, 3, 3).contiguous(memory_format=torch.channels_last))


# ---- the extension's patch kernels (csrc/patch_rows.cpp) and the fallback without them ----

needs_patch_kernels = pytest.mark.skipif(not conv_rows.kernels_loaded(), reason="the C++ extension is not built")


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
    if patch_kernels and not conv_rows.kernels_loaded():
        pytest.skip("the C++ extension is not built")
    monkeypatch.setattr(conv_rows, "kernels_loaded", lambda: patch_kernels)
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
