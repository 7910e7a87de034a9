"""What every image flow model shares: preprocessing, the loss in bits/dim, encode/decode, sampling.

The decoder flow maps x in [-1, 1] (``[B, C, H, W]``) to v of the same shape in the density direction,
optionally conditioned on a global code z; subclasses say where z comes from (:meth:`_z_terms`).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from fastflow.config import ModelConfig
from fastflow.errors import UsageError
from fastflow.flows import Flow, MultiScaleLevel, weight_statistics
from fastflow.flows.debug import NonFiniteError
from fastflow.flows.memory import ChainMonitor
from fastflow.models import preprocess as pp
from fastflow.ops._deferred import raise_deferred_errors
from fastflow.schema import AT_LEAST_ONE, NON_NEGATIVE, check

NONFINITE_POLICIES = ("raise", "warn")


def _count_nonfinite(x: torch.Tensor, z: torch.Tensor | None = None) -> int:
    """How many items of the batch ``x`` ``[B, ...]`` (with their codes ``z`` ``[B, dz]``) hold a NaN or an
    infinity."""
    bad = (~torch.isfinite(x)).flatten(1).any(1)
    if z is not None:
        bad = bad.to(z.device) | (~torch.isfinite(z)).any(1)
    return int(bad.sum())


def randn(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) noise of ``shape`` on ``like``'s device and dtype, drawn from ``generator`` if given."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like.device, like.dtype)


class ImageFlowModel(nn.Module):
    """Base of Glow, refined Glow and Wolf. Images are uint8 (or float pixel values) ``[B, C, H, W]``."""

    kind = ""
    has_z = False

    def __init__(self, config: ModelConfig, flow: Flow) -> None:
        super().__init__()
        self.config = config
        self.flow = flow
        self.num_dims = config.in_channels * config.image_size**2
        self.recompute_monitor = ChainMonitor()
        # Saved in the state dict, so a loaded checkpoint is never initialised again by accident.
        self.register_buffer("initialized", torch.tensor(False))
        if config.memory_efficient:
            self.set_memory_efficient(True)

    # -- backends -------------------------------------------------------------------------------
    def set_backend(self, backend: str) -> ImageFlowModel:
        """Run every layer's ops with ``backend``: "auto", "reference", "triton" or "cpu"
        (:mod:`fastflow.ops.backends`)."""
        for m in self.modules():
            if hasattr(m, "backend"):
                m.backend = backend
        return self

    def set_memory_efficient(self, enabled: bool = True, tolerance: float = 1e-3) -> ChainMonitor:
        """Backpropagate through the decoder flow by recomputing each step's input from its output
        (activation memory no longer grows with depth). Returns the monitor of reconstruction errors;
        a recomputed input off by more than ``tolerance`` raises a warning naming the layer."""
        if not isinstance(self.flow, MultiScaleLevel):
            raise UsageError(
                f"memory-efficient backprop needs the refined-Glow decoder (refined_glow, wolf), not {self.kind}"
            )
        self.recompute_monitor.tolerance = tolerance
        self.flow.set_memory_efficient(enabled, self.recompute_monitor)
        self.config.memory_efficient = enabled
        return self.recompute_monitor

    def read_device_checks(self) -> None:
        """Read the checks that a training step keeps on the device (one host sync): warn for any
        recomputed input over the tolerance, and raise ``ValueError`` for any deferred op check
        (``fastflow.functional.raise_deferred_errors``). The trainer calls it at every log interval."""
        self.recompute_monitor.flush()
        raise_deferred_errors()

    # -- the global code (none here) ----------------------------------------------------------------
    def _z_terms(
        self,
        x: torch.Tensor,
        bins: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """z for the decoder and the KL term per image ``[B]`` (nats)."""
        return None, bins.new_zeros(bins.shape[0])

    def _check_z(self, z: torch.Tensor | None, batch: int) -> None:
        if z is not None:
            raise UsageError(f"a {self.kind} model has no global code z; pass z=None")

    def _deterministic_z(self, bins: torch.Tensor) -> torch.Tensor | None:
        return None

    def _initialize_z(self, bins: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        return None

    # -- training ------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        pp.check_images(x, self.config.in_channels, self.config.image_size)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Data-dependent init on a batch of images (run once, before training; sets
        ``self.initialized``, which the state dict carries, so resumed runs skip it)."""
        self._check(x)
        was_training = self.training
        self.eval()
        try:
            bins = self._bins(x)
            z = self._initialize_z(bins, generator)
            with weight_statistics(self):
                self.flow.initialize(pp.dequantize(bins, self.config.n_bits, generator), z)
            self.initialized.fill_(True)
        finally:
            self.train(was_training)

    def loss(self, x: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None) -> dict:
        """The negative ELBO of a batch, averaged over ``num_samples`` draws of noise (and z).

        Returns ``loss`` (scalar mean bits/dim, to backpropagate), ``bpd`` ``[B]`` (detached),
        ``nll`` ``[B]`` (nats of -log p(x | z), in bin units) and ``kl`` ``[B]`` (nats).
        """
        self._check(x)
        check("num_samples", num_samples, int, AT_LEAST_ONE)
        b = x.shape[0]
        bins = self._bins(x)
        bins = bins.repeat(num_samples, 1, 1, 1)
        with weight_statistics(self):
            z, kl = self._z_terms(pp.bins_to_unit(bins, self.config.n_bits), bins, generator)
            v, logdet = self.flow(pp.dequantize(bins, self.config.n_bits, generator), z)
        nll = -(pp.standard_normal_log_prob(v) + logdet)
        nll = nll.view(num_samples, b).mean(0)
        kl = kl.view(num_samples, b).mean(0)
        bpd = pp.bits_per_dim(nll + kl, self.num_dims, self.config.n_bits)
        bin_nll = nll + self.num_dims * math.log(2.0**self.config.n_bits / 2)
        return {"loss": bpd.mean(), "bpd": bpd.detach(), "nll": bin_nll.detach(), "kl": kl.detach()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean bits/dim of a batch (the training loss)."""
        return self.loss(x)["loss"]

    # -- encode, decode, sample -----------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, random: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """x (uint8 ``[B, C, H, W]``) -> (z ``[B, dz]`` or None, v ``[B, C, H, W]``).

        Deterministic by default: z = mu(x) and x is taken at its bin centres, so
        ``decode(*encode(x))`` returns x exactly (up to float error far below a bin).
        """
        self._check(x)
        bins = self._bins(x)
        with weight_statistics(self):
            if random:
                z, _ = self._z_terms(pp.bins_to_unit(bins, self.config.n_bits), bins, generator)
                x_in = pp.dequantize(bins, self.config.n_bits, generator)
            else:
                z, x_in = self._deterministic_z(bins), pp.bin_centres(bins, self.config.n_bits)
            v, _ = self.flow(x_in, z)
        return z, v

    @torch.no_grad()
    def decode(self, z: torch.Tensor | None, v: torch.Tensor, nonfinite: str = "raise") -> torch.Tensor:
        """(z, v) -> uint8 images ``[B, C, H, W]`` (generation direction).

        NaN or infinite values, in ``v`` or ``z`` or produced by the inverse flow (an overflow), have no
        pixel value. ``nonfinite="raise"`` (default): a :class:`~fastflow.errors.UsageError` for ``v`` or ``z``, a
        :class:`~fastflow.flows.debug.NonFiniteError` for the flow's output. ``"warn"``: one warning
        counting the images affected, whose bad values become black (NaN, -inf) or white (+inf) pixels.
        """
        size, c = self.config.image_size, self.config.in_channels
        if v.dim() != 4 or tuple(v.shape[1:]) != (c, size, size):
            raise UsageError(f"v must have shape [B, {c}, {size}, {size}], got {tuple(v.shape)}")
        if nonfinite not in NONFINITE_POLICIES:
            raise UsageError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self._check_z(z, v.shape[0])
        bad_v = _count_nonfinite(v, z)
        if bad_v and nonfinite == "raise":
            raise UsageError(f"v or z holds NaN or infinite values in {bad_v} of {v.shape[0]} images")
        with weight_statistics(self, need_inverse=True):
            x, _ = self.flow.inverse(v.to(self._device()), z)
        bad_x = _count_nonfinite(x)
        if bad_x and nonfinite == "raise":
            raise NonFiniteError(
                f"the inverse flow produced NaN or infinite values in {bad_x} of {v.shape[0]} images "
                f"(an overflow: try a lower temperature, or an earlier checkpoint)"
            )
        if bad_x:
            warnings.warn(
                f"{bad_x} of {v.shape[0]} decoded images hold NaN or infinite values "
                f"({bad_v} of them from v or z itself); those values are shown as black or white pixels",
                stacklevel=2,
            )
        return pp.postprocess(x, self.config.n_bits)

    def _sample_z(self, n: int, generator: torch.Generator | None) -> torch.Tensor | None:
        return None

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None, nonfinite: str = "raise"
    ) -> torch.Tensor:
        """n uint8 samples ``[n, C, H, W]``: v ~ N(0, T^2 I) (z from its prior, no temperature).
        ``temperature`` is a finite number >= 0; ``nonfinite`` as in :meth:`decode`."""
        temperature = check("temperature", temperature, float, NON_NEGATIVE)
        n = check("n", n, int, AT_LEAST_ONE)
        size, c = self.config.image_size, self.config.in_channels
        ref = next(self.parameters())
        v = randn((n, c, size, size), ref, generator) * temperature
        return self.decode(self._sample_z(n, generator), v, nonfinite)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _bins(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels -> n-bit bin indices on the model's device, in the model's float dtype."""
        ref = next(self.parameters())
        return pp.to_bins(x.to(ref.device), self.config.n_bits).to(ref.dtype)
