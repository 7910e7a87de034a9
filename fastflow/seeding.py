"""Seeds: every random stream of fastflow is a seed mixed with the numbers that tell it apart.

:func:`mix_seed` hashes any number of integers into one 63-bit seed. The streams of a training run,
all drawn from the run's ``train.seed``:

- data order: ``mix_seed(seed, epoch)`` (:class:`fastflow.data.EpochBatchSampler`);
- augmentation of image ``i``: ``mix_seed(seed, epoch, i)`` (:class:`fastflow.data.Augmented`);
- dequantisation / z noise of a step: ``mix_seed(seed, rank, step, TRAIN_STREAM)``;
- evaluation noise: ``mix_seed(seed, rank, EVAL_STREAM)``;
- the data-dependent init batch and its noise: ``mix_seed(seed, INIT_STREAM)``;
- the sample grids written at validation: ``mix_seed(seed, SAMPLE_STREAM)``.

Streams of the same length are told apart only by their values, so a few coincide: the data order
of epoch 3 (4) is drawn from the same seed as the init batch (the sample grids), and the augmentation
of image 2 in epoch 0 from the same seed as rank 0's evaluation noise. They draw different things, and
changing the ids would change every existing run's random numbers, so they are kept.

The inference commands draw the images they show from their own ``--seed`` with
``mix_seed(seed, SWITCH_IMAGES)``, ``INTERPOLATE_IMAGES`` or ``RECONSTRUCT_IMAGES``.
"""

from __future__ import annotations

import numpy as np

TRAIN_STREAM = 1
EVAL_STREAM = 2  # keeps evaluation noise apart from training noise drawn from the same seed
INIT_STREAM = 3
SAMPLE_STREAM = 4

SWITCH_IMAGES = 1
INTERPOLATE_IMAGES = 2
RECONSTRUCT_IMAGES = 3


def mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value (NumPy's SeedSequence hashing)."""
    state = np.random.SeedSequence([v & 0xFFFFFFFF for v in values] + [(v >> 32) & 0xFFFFFFFF for v in values])
    return int(state.generate_state(2, np.uint64)[0] >> np.uint64(1))
