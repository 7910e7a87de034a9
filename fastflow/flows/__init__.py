"""Invertible layers: ``forward(x, cond) -> (y, logdet[B])`` is the density direction (x to v)."""

from fastflow.flows.actnorm import ActNorm
from fastflow.flows.base import Flow, FlowSequence
from fastflow.flows.conv1x1 import (
    ActNormConv1x1,
    InvertibleConv1x1,
    InvertibleLinear,
    LUConv1x1,
    weight_statistics,
)
from fastflow.flows.coupling import AffineCoupling, CouplingNet1d, CouplingNet2d, image_coupling, vector_coupling
from fastflow.flows.glow import GlowCoupling, GlowLevel, build_glow
from fastflow.flows.prior import build_prior_flow
from fastflow.flows.refined import MultiScaleLevel, SplitPrior, build_refined_glow, refined_step
from fastflow.flows.squeeze import squeeze, unsqueeze

__all__ = [
    "ActNorm",
    "ActNormConv1x1",
    "AffineCoupling",
    "CouplingNet1d",
    "CouplingNet2d",
    "Flow",
    "FlowSequence",
    "GlowCoupling",
    "GlowLevel",
    "InvertibleConv1x1",
    "InvertibleLinear",
    "LUConv1x1",
    "MultiScaleLevel",
    "SplitPrior",
    "build_glow",
    "build_prior_flow",
    "build_refined_glow",
    "image_coupling",
    "refined_step",
    "squeeze",
    "unsqueeze",
    "vector_coupling",
    "weight_statistics",
]
