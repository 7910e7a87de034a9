"""The flow prior over the global code z (vectors ``[B, dz]``).

Density direction z -> eps, eps ~ N(0, I). Each step: ActNorm, invertible linear, then the vector
analogue of the refined step: coupling continuous/up, continuous/down, ActNorm, skip/up, skip/down,
with MLP conditioners. Sampling runs the inverse from eps ~ N(0, I) (no temperature on z).
"""

from __future__ import annotations

from fastflow.errors import UsageError
from fastflow.flows.actnorm import ActNorm
from fastflow.flows.base import FlowSequence
from fastflow.flows.conv1x1 import InvertibleLinear
from fastflow.flows.coupling import vector_coupling


def build_prior_flow(z_dim: int, num_steps: int, hidden: int, alpha: float = 1.0) -> FlowSequence:
    """A ``num_steps``-step flow over ``[B, z_dim]``."""
    if z_dim < 2:
        raise UsageError(f"the z prior needs z_dim >= 2, got {z_dim}")
    layers = []
    for _ in range(num_steps):
        layers += [
            ActNorm(z_dim),
            InvertibleLinear(z_dim),
            vector_coupling(z_dim, hidden, "continuous", "up", alpha),
            vector_coupling(z_dim, hidden, "continuous", "down", alpha),
            ActNorm(z_dim),
            vector_coupling(z_dim, hidden, "skip", "up", alpha),
            vector_coupling(z_dim, hidden, "skip", "down", alpha),
        ]
    return FlowSequence(layers)
