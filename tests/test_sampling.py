"""Sample grids without overflowed images (fastflow.inference.sampling).

The failing case, pinned: the demo's Wolf after a short training overflows float32 on a few draws at
T = 1 because a few couplings in a row have scales s = 1 + tanh(u / 2) near 0 and x_b = (y_b - mu) / s
multiplies the values past float32's range. Here every image coupling of tiny_wolf gets the same small
scale (its network's u bias, with the zero-initialised weights: s = 2 sigmoid(b)), chosen so that about
a quarter of the draws at T = 1 overflow (15 of 64 at b = -11.68 on the machine it was tuned on; the
assertions only need some and not all), and b = -11.9 makes every draw overflow (a diverged model).
"""

from __future__ import annotations

import pytest
import torch

from fastflow.flows.coupling import AffineCoupling, CouplingNet2d
from fastflow.flows.debug import NonFiniteError
from fastflow.inference.sampling import MAX_ROUNDS, finite_samples
from fastflow.models import build_model


def wolf_with_small_scales(u_bias: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("tiny_wolf")
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model.initialize(images, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        for layer in model.flow.modules():
            if isinstance(layer, AffineCoupling) and isinstance(layer.net, CouplingNet2d):
                bias = layer.net.conv_out.bias  # [mu channels, u channels]
                bias[bias.shape[0] // 2 :] = u_bias
    return model


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_overflowed_draws_are_drawn_again_and_the_rest_kept():
    model = wolf_with_small_scales(-11.68)
    with pytest.raises(NonFiniteError):
        model.sample(64, 1.0, generator())
    with pytest.warns(UserWarning, match="decoded images hold NaN or infinite values") as caught:
        plain = model.sample(64, 1.0, generator(), nonfinite="warn")
    overflowed = int(str(caught[0].message).split(" of ")[0])
    assert 0 < overflowed < 32
    images, redrawn = finite_samples(model, 64, 1.0, generator())
    assert images.shape == plain.shape and images.dtype == torch.uint8
    assert redrawn >= overflowed
    # The first draw is model.sample's: its finite images are kept as they were, the others replaced.
    kept = (images == plain).flatten(1).all(1)
    assert 64 - overflowed <= int(kept.sum()) < 64


def test_a_model_that_always_overflows_gives_up_with_the_reason():
    model = wolf_with_small_scales(-11.9)
    with pytest.raises(NonFiniteError, match=f"4 of 4 samples at temperature 1 still overflow after {MAX_ROUNDS}"):
        finite_samples(model, 4, 1.0, generator())


def test_without_an_overflow_the_samples_are_model_samples():
    model = wolf_with_small_scales(0.0)
    images, redrawn = finite_samples(model, 8, 1.0, generator())
    assert redrawn == 0 and torch.equal(images, model.sample(8, 1.0, generator()))
