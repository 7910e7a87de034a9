"""A whole Wolf step (forward + backward) on the torch backend with the CPU row formulation of the
coupling networks (``rows``: :mod:`fastflow.ops.conv_rows`) against the same model with it switched
off (``nchw``: ``conv2d`` for the three convolutions, the fused bias + ELU kept), in one process.

    python -m benchmarks.bench_rows_ab               # CIFAR-10 Wolf, batch 16, 2 threads, 8 rounds

The two take one step each per round, the order reversed every other round; the speed-up is the
median of the paired per-round ratios (nchw time / rows time). Minor page faults per step
(``getrusage``) show what the allocator does: each one is a fresh page the kernel had to zero.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import time
from collections.abc import Iterator

import torch

import fastflow.flows.coupling as coupling
from benchmarks._common import cpu_model, median, paired_ratio
from benchmarks.bench_models import Resolution, model_config
from fastflow.models import build_model


@contextlib.contextmanager
def row_formulation(enabled: bool) -> Iterator[None]:
    """The coupling networks' choice of formulation, forced off when ``enabled`` is False."""
    chosen = coupling.use_rows
    if not enabled:
        coupling.use_rows = lambda backend, x: False
    try:
        yield
    finally:
        coupling.use_rows = chosen


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_rows_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cifar10_wolf", help="a bundled config, {dataset}_{kind}")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset, kind = args.config.split("_", 1)
    cfg = model_config(Resolution(dataset, batch=args.batch, repeats=1, variants=("torch",)), kind)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, 256, (args.batch, cfg.in_channels, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    model.initialize(x, generator=torch.Generator().manual_seed(0))
    model.set_backend("torch")

    def step(rows: bool) -> tuple[float, int]:
        with row_formulation(rows):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            model.loss(x)["loss"].backward()
            return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    load = os.getloadavg()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} | {cpu_model()} | {args.threads} threads | {args.config} batch "
        f"{args.batch} | {args.rounds} rounds | load {load[0]:.2f} {load[1]:.2f}"
    )
    step(True), step(False)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    faults: dict[bool, list[int]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for rows in (True, False) if round_ % 2 == 0 else (False, True):
            seconds, count = step(rows)
            times[rows].append(seconds)
            faults[rows].append(count)
    for rows, name in ((False, "nchw"), (True, "rows")):
        print(f"{name}: step {median(times[rows]):.2f} s, {median(faults[rows]):.0f} minor page faults per step")
    speedup = paired_ratio(times[False], times[True])
    print(f"rows vs nchw: {speedup:.2f}x (median of paired ratios)")
    return speedup


if __name__ == "__main__":
    main()
