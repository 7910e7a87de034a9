"""The order in which images are visited: training batches as a function of (seed, epoch) only, and
the fixed subsets and in-order loaders of evaluation and the probe.

Each epoch is a permutation of the training set drawn from (seed, epoch), cut into global batches of
``batch_size`` (the incomplete last batch is dropped). Rank r of a world of W processes takes the r-th
of W equal slices of every global batch, so the images of each global batch are the same whatever
the number of processes, and a resumed run can start inside an epoch at any batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from fastflow.errors import UsageError
from fastflow.seeding import mix_seed


class EpochBatchSampler(Sampler[list[int]]):
    """Yields this rank's index lists ``[batch_size // world_size]`` for one epoch, from ``start``."""

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise UsageError(f"batch size {batch_size} must be divisible by the number of processes {world_size}")
        if num_items < batch_size:
            raise UsageError(f"the training set has {num_items} images, fewer than one batch of {batch_size}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // self.batch_size

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Make the next iteration cover ``epoch`` from its batch ``start`` on."""
        if not 0 <= start <= self.steps_per_epoch:
            raise ValueError(f"start batch {start} outside [0, {self.steps_per_epoch}]")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_items, generator=generator)
        local = self.batch_size // self.world_size
        for step in range(self.start, self.steps_per_epoch):
            first = step * self.batch_size + self.rank * local
            yield order[first : first + local].tolist()


def subset_indices(total: int, limit: int, seed: int = 0) -> list[int]:
    """All of ``range(total)`` when ``limit`` is 0 or covers it, else a fixed random subset of ``limit``
    indices in increasing order (data sets such as the embedded one are sorted by class)."""
    if limit <= 0 or limit >= total:
        return list(range(total))
    return sorted(torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:limit].tolist())


def image_loader(
    dataset: Dataset,
    batch_size: int,
    indices: range | list[int],
    workers: int = 0,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """Batches ``(images uint8 [b, 3, H, W], labels [b])`` of ``dataset[indices]`` in order; ``worker_init_fn``
    runs in each of the ``workers`` processes (DataLoader's argument)."""
    return DataLoader(
        Subset(dataset, list(indices)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=worker_init_fn,
    )
