"""Refined Glow (no z) and Wolf (refined Glow decoder conditioned on a global code z).

Wolf is a VAE: q(z | x) from the compression encoder, a flow prior p(z), and the decoder flow
p(x | z) from x to v ~ N(0, I). Per image, the loss is -log p(x | z) + log q(z | x) - log p(z) with a
single-sample (Monte Carlo) KL, as in the paper's code.
"""

from __future__ import annotations

import math

import torch

from fastflow.config import ModelConfig
from fastflow.errors import UsageError
from fastflow.flows import build_prior_flow, build_refined_glow
from fastflow.models import preprocess as pp
from fastflow.models.base import ImageFlowModel, randn
from fastflow.models.encoder import CompressionEncoder


def _decoder(config: ModelConfig, z_dim: int):
    f = config.flow
    return build_refined_glow(
        config.in_channels,
        f.levels,
        f.num_steps,
        f.hidden_channels,
        f.factors,
        z_dim=z_dim,
        transform=f.transform,
        alpha=f.alpha,
    )


class RefinedGlowModel(ImageFlowModel):
    """Refined Glow: the Wolf decoder flow with no global code."""

    kind = "refined_glow"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, _decoder(config, 0))


class WolfModel(ImageFlowModel):
    """Wolf: encoder q(z | x), flow prior p(z), decoder flow p(x | z)."""

    kind = "wolf"
    has_z = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, _decoder(config, config.z_dim))
        e, p = config.encoder, config.prior
        self.z_dim = config.z_dim
        self.encoder = CompressionEncoder(
            config.in_channels, config.image_size, e.levels, e.hidden_planes, e.out_planes, config.z_dim
        )
        self.prior = build_prior_flow(config.z_dim, p.num_steps, p.hidden_features, p.alpha)

    def _posterior(self, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu and log-variance of q(z | x), in float32 (or float64) even under autocast."""
        mu, logvar = self.encoder(unit)
        dtype = unit.dtype if unit.dtype == torch.float64 else torch.float32
        return mu.to(dtype), logvar.to(dtype)

    def _z_terms(
        self,
        unit: torch.Tensor,
        bins: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self._posterior(unit)
        eps = randn(mu.shape, mu, generator)
        z = mu + torch.exp(0.5 * logvar) * eps
        log_q = -0.5 * (eps.pow(2) + logvar + math.log(2 * math.pi)).sum(1)
        prior_eps, logdet = self.prior(z)
        log_p = pp.standard_normal_log_prob(prior_eps) + logdet
        return z, log_q - log_p

    def _deterministic_z(self, bins: torch.Tensor) -> torch.Tensor:
        return self._posterior(pp.bins_to_unit(bins, self.config.n_bits))[0]

    @torch.no_grad()
    def _initialize_z(self, bins: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        unit = pp.bins_to_unit(bins, self.config.n_bits)
        self.encoder.initialize(unit)
        mu, logvar = self._posterior(unit)
        z = mu + torch.exp(0.5 * logvar) * randn(mu.shape, mu, generator)
        self.prior.initialize(z)
        return z

    def _check_z(self, z: torch.Tensor | None, batch: int) -> None:
        if z is None or z.dim() != 2 or tuple(z.shape) != (batch, self.z_dim):
            shape = None if z is None else tuple(z.shape)
            raise UsageError(f"z must have shape [{batch}, {self.z_dim}] (one code per image), got {shape}")

    def _sample_z(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        ref = next(self.parameters())
        z, _ = self.prior.inverse(randn((n, self.z_dim), ref, generator))
        return z

    @torch.no_grad()
    def switch(self, x0: torch.Tensor, x1: torch.Tensor, nonfinite: str = "raise") -> torch.Tensor:
        """For pairs (x0, x1) ``[B, C, H, W]``: decode(z1, v0) and decode(z0, v1), ``[B, 2, C, H, W]``;
        ``nonfinite`` as in :meth:`decode`."""
        if x0.shape != x1.shape:
            raise UsageError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        z0, v0 = self.encode(x0)
        z1, v1 = self.encode(x1)
        return torch.stack([self.decode(z1, v0, nonfinite), self.decode(z0, v1, nonfinite)], dim=1)

    @torch.no_grad()
    def interpolate(
        self, x0: torch.Tensor, x1: torch.Tensor, alphas: list[float], betas: list[float], nonfinite: str = "raise"
    ) -> torch.Tensor:
        """2-D interpolation of one pair ``[1, C, H, W]``: z((1-a) z0 + a z1), v((1-b) v0 + b v1);
        ``nonfinite`` as in :meth:`decode`.

        Returns uint8 ``[len(alphas), len(betas), C, H, W]``; (a, b) = (1, 0) is the switch image.
        """
        if x0.shape[0] != 1 or x1.shape[0] != 1:
            raise UsageError(
                f"interpolate takes one pair of shape [1, C, H, W], got {tuple(x0.shape)} and {tuple(x1.shape)}"
            )
        z0, v0 = self.encode(x0)
        z1, v1 = self.encode(x1)
        a = torch.tensor(alphas, dtype=z0.dtype, device=z0.device).view(-1, 1, 1)
        b = torch.tensor(betas, dtype=v0.dtype, device=v0.device).view(1, -1, 1, 1, 1, 1)
        z = ((1 - a) * z0 + a * z1).expand(len(alphas), len(betas), -1).reshape(-1, self.z_dim)
        v = ((1 - b) * v0 + b * v1).expand(len(alphas), len(betas), *v0.shape).reshape(-1, *v0.shape[1:])
        return self.decode(z, v, nonfinite).view(len(alphas), len(betas), *v0.shape[1:])
