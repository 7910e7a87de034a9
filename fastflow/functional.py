"""The drop-in functional API of fastflow: fused flow ops, usable from any PyTorch flow.

    import fastflow.functional as FF
    y, logdet = FF.affine_coupling(x, mu, u, split="skip", order="up")

Each op takes ``backend="auto" | "reference" | "triton" | "cpu"`` (:mod:`fastflow.ops.backends`): "auto"
runs the Triton kernels on CUDA tensors and the CPU implementation elsewhere; "reference" computes
the op as the paper's code does. The ops themselves (reference, autograd Function, backend dispatch)
live in the modules of :mod:`fastflow.ops` of the same names, and their kernels in
``fastflow.kernels``; this module only gathers the public entry points in one place.
"""

from fastflow.ops._deferred import raise_deferred_errors
from fastflow.ops.actnorm_conv1x1 import actnorm_conv1x1, actnorm_conv1x1_inverse
from fastflow.ops.affine_coupling import (
    CouplingScale,
    affine_coupling,
    affine_coupling_inverse,
    conditioning_channels,
    transformed_channels,
)
from fastflow.ops.cond_bias_elu import cond_bias_elu
from fastflow.ops.conv1x1_bias_elu import conv1x1_bias_elu
from fastflow.ops.slogdet import batched_inverse, batched_slogdet, batched_slogdet_inverse
from fastflow.ops.weight_norm import weight_norm

__all__ = [
    "CouplingScale",
    "actnorm_conv1x1",
    "actnorm_conv1x1_inverse",
    "affine_coupling",
    "affine_coupling_inverse",
    "batched_inverse",
    "batched_slogdet",
    "batched_slogdet_inverse",
    "cond_bias_elu",
    "conditioning_channels",
    "conv1x1_bias_elu",
    "raise_deferred_errors",
    "transformed_channels",
    "weight_norm",
]
