"""The coupling network's middle on the CPU, ``elu(conv1x1(h) + bias)`` forward + backward, in the
formulations the torch backend could run, against the reference (``conv2d``, add, ``F.elu``):

- ``conv2d``: ``conv2d`` then the extension's fused bias + ELU (what ``backend="torch"`` runs);
- ``nhwc_mm``: h permuted to NHWC rows ``[B*H*W, C]`` (a copy), one ``mm``, permuted back (a copy),
  then the fused bias + ELU: the faster GEMM, paying for the layout changes around it.

    python -m benchmarks.bench_conv_mid                      # [16, 512, 16, 16], 2 threads

Interleaved rounds, the order reversed every other round; each ratio is the median of the paired
per-round ratios (reference time / formulation time).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.nn import functional as F

from benchmarks._common import cpu_model, median, paired_ratio, time_interleaved
from fastflow.functional import cond_bias_elu
from fastflow.ops.conv1x1_bias_elu import conv1x1_bias_elu


def nhwc_mm(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    batch, c_in, height, width = h.shape
    rows = h.permute(0, 2, 3, 1).reshape(-1, c_in)
    pre = (rows @ weight.t()).view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()
    return cond_bias_elu(pre, bias, backend="torch")


FORMULATIONS = {
    "reference": lambda h, w, b: conv1x1_bias_elu(h, w, b, backend="reference"),
    "conv2d": lambda h, w, b: conv1x1_bias_elu(h, w, b, backend="torch"),
    "nhwc_mm": nhwc_mm,
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_conv_mid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[16, 512, 16, 16], metavar=("B", "C", "H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch, channels, height, width = args.shape
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(batch, channels, height, width, generator=gen).requires_grad_()
    weight = (torch.randn(channels, channels, generator=gen) / channels**0.5).requires_grad_()
    bias = torch.randn(batch, channels, generator=gen).requires_grad_()
    grad = torch.randn(batch, channels, height, width, generator=gen)

    def step(fn):
        def run() -> None:
            for t in (h, weight, bias):
                t.grad = None
            fn(h, weight, bias).backward(grad)

        return run

    ref = F.elu(F.conv2d(h, weight.view(channels, channels, 1, 1)) + bias[:, :, None, None])
    for name, fn in FORMULATIONS.items():
        torch.testing.assert_close(fn(h, weight, bias), ref, atol=1e-4, rtol=1e-4, msg=name)
        step(fn)()  # warm-up
    load = os.getloadavg()
    times = time_interleaved({n: step(fn) for n, fn in FORMULATIONS.items()}, args.rounds, lambda: None)
    flops = 3 * 2 * batch * height * width * channels * channels  # forward, input and weight gradients
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} | {cpu_model()} | {args.threads} threads | shape {args.shape} | "
        f"{args.rounds} rounds | load {load[0]:.2f} {load[1]:.2f}"
    )
    ratios = {}
    for name, ts in times.items():
        ratios[name] = paired_ratio(times["reference"], ts)
        print(
            f"{name:>10}: {median(ts) * 1e3:7.1f} ms fwd+bwd, {flops / median(ts) / 1e9:5.0f} GFLOP/s, "
            f"{ratios[name]:.2f}x reference"
        )
    return ratios


if __name__ == "__main__":
    main()
