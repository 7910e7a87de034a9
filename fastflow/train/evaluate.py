"""Bits/dim of a model on a data set: the negative ELBO averaged over ``k`` draws of noise and z
(the paper evaluates with k = 5; not importance-weighted, so an upper bound on the NLL)."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from fastflow.data.order import image_loader, subset_indices
from fastflow.errors import UsageError
from fastflow.seeding import EVAL_STREAM, mix_seed
from fastflow.train.distributed import Context, all_reduce_sum
from fastflow.train.stop import ignore_stop_signals


@torch.no_grad()
def evaluate_bpd(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int,
    k: int,
    seed: int,
    ctx: Context,
    limit: int = 0,
    workers: int = 0,
) -> dict[str, float]:
    """Mean bits/dim and KL (in bits/dim) over ``limit`` images (all if 0; else a fixed random subset),
    split over ranks.

    Returns ``{"bpd", "kl_bpd", "images"}``; the same on every rank. The model is put in eval mode
    (BatchNorm uses its running statistics) and restored afterwards.
    """
    indices = subset_indices(len(dataset), limit)
    if not indices:
        raise UsageError("cannot evaluate on an empty data set")
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=ctx.device).manual_seed(mix_seed(seed, ctx.rank, EVAL_STREAM))
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    try:
        for images, _ in image_loader(
            dataset, batch_size, indices[ctx.rank :: ctx.world_size], workers, ignore_stop_signals
        ):
            out = model.loss(images.to(ctx.device), num_samples=k, generator=generator)
            totals[0] += out["bpd"].double().sum()
            totals[1] += out["kl"].double().sum() / (model.num_dims * math.log(2))
            totals[2] += images.shape[0]
    finally:
        model.train(was_training)
    totals = all_reduce_sum(totals, ctx)
    return {"bpd": float(totals[0] / totals[2]), "kl_bpd": float(totals[1] / totals[2]), "images": int(totals[2])}
