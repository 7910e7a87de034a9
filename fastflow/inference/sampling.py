"""Sample grids whose every image is finite: draws whose inverse flow overflows are drawn again.

Why a draw overflows (traced on the demo's Wolf after a short training): the inverse of a coupling is
x_b = (y_b - mu) / s with Wolf's scale s = 1 + tanh(u / 2) in (0, 2). For inputs far from the
training data the conditioning networks give scales of 0.01 to 0.02 in a few couplings in a row, each
multiplying the values by 50 to 70, until one network sees values near 6e4, gives u near -230, and s
underflows to 0 in float32: x_b becomes infinite and the next coupling's network turns it into NaN.
The flow is exact; the draw is one the model cannot yet invert in float32.
"""

from __future__ import annotations

import torch
from torch import nn

from fastflow.flows.debug import NonFiniteError
from fastflow.models.base import randn

MAX_ROUNDS = 20
OVERFLOW_REASON = (
    "their inverse flow overflowed float32 (a coupling's scale s = 1 + tanh(u / 2) near 0 for a draw far from "
    "the training data: x_b = (y_b - mu) / s grows past float32's range)"
)


def _decode_each(model: nn.Module, z: torch.Tensor | None, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(finite ``[B]`` bool, uint8 images ``[B, C, H, W]``; overflowed ones left black): one decode of the
    whole batch, and one per image only when the batch overflowed somewhere."""
    try:
        return torch.ones(v.shape[0], dtype=torch.bool), model.decode(z, v, nonfinite="raise")
    except NonFiniteError:
        pass
    finite = torch.zeros(v.shape[0], dtype=torch.bool)
    images = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for i in range(v.shape[0]):
        try:
            images[i] = model.decode(None if z is None else z[i : i + 1], v[i : i + 1], nonfinite="raise")[0]
            finite[i] = True
        except NonFiniteError:
            continue
    return finite, images


@torch.no_grad()
def finite_samples(
    model: nn.Module, n: int, temperature: float, generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """n uint8 samples ``[n, C, H, W]`` (v ~ N(0, T^2 I), z from its prior) and how many draws were
    redrawn because their decode overflowed. Draws as ``model.sample`` does, so without an overflow
    the images are those of ``model.sample(n, temperature, generator)``. Raises NonFiniteError when some
    image still overflows after ``MAX_ROUNDS`` draws (a diverged model)."""
    size, c = model.config.image_size, model.config.in_channels
    ref = next(model.parameters())
    v = randn((n, c, size, size), ref, generator) * temperature
    z = model._sample_z(n, generator)
    images = torch.empty(v.shape, dtype=torch.uint8, device=ref.device)
    pending = torch.arange(n)
    redrawn = 0
    for _ in range(MAX_ROUNDS):
        finite, decoded = _decode_each(model, None if z is None else z[pending], v[pending])
        images[pending[finite]] = decoded[finite]
        pending = pending[~finite]
        if len(pending) == 0:
            return images, redrawn
        redrawn += len(pending)
        v[pending] = randn((len(pending), c, size, size), ref, generator) * temperature
        if z is not None:
            z[pending] = model._sample_z(len(pending), generator)
    raise NonFiniteError(
        f"{len(pending)} of {n} samples at temperature {temperature:g} still overflow after {MAX_ROUNDS} draws: "
        f"{OVERFLOW_REASON}; try a lower temperature or an earlier checkpoint"
    )
