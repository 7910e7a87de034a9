"""The CPU implementation of :func:`fastflow.ops.actnorm_conv1x1.actnorm_conv1x1`: the per-pixel
affine map with the actnorm folded into the matrix, as one batched GEMM (torch ops, so it runs on
every device and dtype)."""

from __future__ import annotations

import torch

from fastflow.ops import backends

backends.register_cpu("actnorm_conv1x1", lambda *tensors: True)


def pixel_affine(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``y[b] = matrix @ x[b] + bias`` per pixel of x ``[B, C, H, W]`` with one ``torch.baddbmm``, one
    pass over x instead of the reference's actnorm pass plus ``conv2d``. Computed in the matrix
    dtype; y in x's dtype."""
    batch, channels, height, width = x.shape
    flat = x.reshape(batch, channels, height * width).to(matrix.dtype)
    c_out = matrix.shape[0]
    y = torch.baddbmm(bias.view(1, c_out, 1).expand(batch, c_out, 1), matrix.expand(batch, c_out, channels), flat)
    return y.view(batch, c_out, height, width).to(x.dtype)
