"""The drop-in op API of fastflow: fused flow ops with plain-PyTorch references.

Each op takes ``backend="auto" | "torch" | "triton"``; "auto" runs the Triton kernels on CUDA
tensors and the reference ops elsewhere.
"""

from fastflow.ops.actnorm_conv1x1 import actnorm_conv1x1, actnorm_conv1x1_inverse
from fastflow.ops.affine_coupling import (
    affine_coupling,
    affine_coupling_inverse,
    conditioning_channels,
    transformed_channels,
)
from fastflow.ops.cond_bias_elu import cond_bias_elu
from fastflow.ops.slogdet import batched_inverse, batched_slogdet, batched_slogdet_inverse

__all__ = [
    "actnorm_conv1x1",
    "actnorm_conv1x1_inverse",
    "affine_coupling",
    "affine_coupling_inverse",
    "batched_inverse",
    "batched_slogdet",
    "batched_slogdet_inverse",
    "cond_bias_elu",
    "conditioning_channels",
    "transformed_channels",
]
