"""A training step of Wolf (or any config) on the CPU with the C++ bias + ELU kernels against the same
step with torch's ELU (``cond_bias_elu_reference``), side by side in one process.

The two modes take turns, one step each per round, and the speed-up is the median of the paired
per-round ratios, so that load from other processes falls on both alike.

    python -m benchmarks.bench_cpu_elu --config cifar10_wolf --batch 8 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

from fastflow.models import build_model
from fastflow.ops import cond_bias_elu as elu_ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar10_wolf")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.config)
    size = model.config.image_size
    x = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8)
    model.initialize(x)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    if not elu_ops._cpu_kernels_loaded():
        raise SystemExit("the C++ extension is not built: nothing to compare")

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model.loss(x)["loss"].backward()
        opt.step()
        return time.perf_counter() - start

    def reference_elu() -> mock._patch:
        return mock.patch.object(elu_ops, "_use_cpu_kernels", lambda h, bias: False)

    step()  # warm-up, both paths
    with reference_elu():
        step()
    kernel, reference = [], []
    for round_ in range(args.rounds):
        for use_kernel in (True, False) if round_ % 2 == 0 else (False, True):
            if use_kernel:
                kernel.append(step())
            else:
                with reference_elu():
                    reference.append(step())
    ratios = [r / k for r, k in zip(reference, kernel)]
    print(
        f"{args.config} batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds: "
        f"torch ELU {statistics.median(reference):.3f} s, C++ bias+ELU {statistics.median(kernel):.3f} s "
        f"per step; speed-up {statistics.median(ratios):.2f}x (median of paired ratios)"
    )


if __name__ == "__main__":
    main()
