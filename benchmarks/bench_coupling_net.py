"""Wolf's coupling network (conv3x3 -> ELU -> conv1x1 + FC(z) -> ELU -> weight-normed conv3x3) forward +
backward on the CPU, in the formulations the cpu backend could run, against the reference backend:

- ``reference``: ``backend="reference"`` (NCHW ``conv2d``, ``h + bias``, ``F.elu``: the paper's way);
- ``nchw``: NCHW ``conv2d`` for the three convolutions with the extension's fused bias + ELU (the
  cpu backend before the row formulation);
- ``rows``: ``backend="cpu"`` on the CPU: the convolutions as GEMMs over channels-last rows
  in one autograd Function (:mod:`fastflow.ops.cpu.coupling_net`), the ELUs written over the
  GEMM outputs.

    python -m benchmarks coupling_net      # CIFAR-10 Wolf's 16x16, 8x8 and 4x4 nets, batch 16

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
from fastflow.flows.coupling import CouplingNet2d
from fastflow.functional import cond_bias_elu, conv1x1_bias_elu

# (side, conditioning channels in, parameter channels out) of CIFAR-10 Wolf's nets; hidden 512, z 64
CIFAR10_NETS = [(16, 6, 12), (16, 5, 8), (8, 12, 24), (8, 9, 18), (4, 24, 48)]


def nchw(net: CouplingNet2d, x_a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    h = cond_bias_elu(F.conv2d(x_a, net.conv_in.weight, padding=1), None, backend="cpu", reuse_input=True)
    h = conv1x1_bias_elu(h, net.conv_mid.weight.flatten(1), net.z_proj(z), backend="cpu")
    return net.conv_out(h)


def backend(name: str):
    def run(net: CouplingNet2d, x_a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        net.backend = name
        return net(x_a, z)

    return run


FORMULATIONS = {"reference": backend("reference"), "nchw": nchw, "rows": backend("cpu")}


def time_net(side: int, c_in: int, c_out: int, batch: int, hidden: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of forward + backward of one net per formulation and round (after checking each
    formulation's output against the reference's)."""
    torch.manual_seed(0)
    net = CouplingNet2d(c_in, c_out, hidden, z_dim=64)
    with torch.no_grad():
        net.conv_out.g.normal_()  # the zero-initialised last conv would hide errors in the check
    x_a = torch.randn(batch, 2 * c_in, side, side)[:, ::2].requires_grad_()  # a skip split's view
    z = torch.randn(batch, 64, requires_grad=True)
    grad = torch.randn(batch, c_out, side, side)
    want = FORMULATIONS["reference"](net, x_a, z)
    for name, fn in FORMULATIONS.items():
        torch.testing.assert_close(fn(net, x_a, z), want, atol=1e-4, rtol=1e-4, msg=name)

    def step(fn):
        def run() -> None:
            net.zero_grad(set_to_none=True)
            x_a.grad = z.grad = None
            fn(net, x_a, z).backward(grad)

        return run

    for fn in FORMULATIONS.values():
        step(fn)()  # warm-up
    return time_interleaved({n: step(fn) for n, fn in FORMULATIONS.items()}, rounds, lambda: None)


def main(argv: list[str] | None = None) -> dict[tuple[int, int, int], dict[str, float]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks coupling_net", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} | {cpu_model()} | {args.threads} threads | batch {args.batch}, "
        f"hidden {args.hidden} | {args.rounds} rounds | load {load[0]:.2f} {load[1]:.2f}"
    )
    results = {}
    for side, c_in, c_out in CIFAR10_NETS:
        times = time_net(side, c_in, c_out, args.batch, args.hidden, args.rounds)
        ratios = {n: paired_ratio(times["reference"], ts) for n, ts in times.items()}
        results[(side, c_in, c_out)] = ratios
        print(
            f"{side:2d}x{side:<2d} {c_in:2d} -> {args.hidden} -> {c_out:2d}: "
            + ", ".join(f"{n} {median(ts) * 1e3:6.1f} ms ({ratios[n]:.2f}x)" for n, ts in times.items())
        )
    return results


if __name__ == "__main__":
    main()
