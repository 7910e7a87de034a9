"""Each fused op of the cpu backend against what ``torch.compile`` makes of its plain-PyTorch
composite, forward + backward, at CIFAR-10 Wolf shapes (batch 16; level 1: 12 channels at 16 x 16,
coupling networks 6 -> 512 -> 512 -> 12).

    python -m benchmarks ops_compile                 # float32, 2 threads, 15 rounds
    python -m benchmarks ops_compile --bf16          # also under bfloat16 autocast
    python -m benchmarks ops_compile --ops cond_bias_elu --rounds 5

Per op, four variants share one set of inputs: ``reference`` (the composite, eager: the yardstick of
the backend table), ``reference+compile`` (``torch.compile`` of the composite, inductor), ``cpu``
(the backend's op, eager: the extension's CPU kernels where it has them) and ``cpu+compile`` (the op
inside a compiled function, where inductor sees it as an opaque custom op or traces through its
Python). Every variant runs once per round, the order reversed every other round; each ratio is the
median over rounds of the paired time ratio against ``reference+compile``. Compile time (cold, the
first two calls) is printed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks._common import cpu_model, median, paired_ratio, time_interleaved
from fastflow.flows.coupling import CouplingNet2d
from fastflow.functional import actnorm_conv1x1, affine_coupling, batched_slogdet, cond_bias_elu, conv1x1_bias_elu

BATCH, CHANNELS, SIDE, HIDDEN, Z_DIM = 16, 12, 16, 512, 64
VARIANTS = ("reference", "reference+compile", "cpu", "cpu+compile")


def _leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape) * scale).requires_grad_()


def _cases() -> dict[str, tuple[Callable[[str], Callable[[], torch.Tensor]], list[torch.Tensor]]]:
    """op name -> (make(backend) -> a function of no arguments returning a scalar to backpropagate,
    the leaves whose gradients are reset each call)."""
    h = _leaf(BATCH, HIDDEN, SIDE, SIDE)
    bias = _leaf(BATCH, HIDDEN, scale=0.1)
    w_mid = _leaf(HIDDEN, HIDDEN, scale=HIDDEN**-0.5)
    x = _leaf(BATCH, CHANNELS, SIDE, SIDE)
    mu = _leaf(BATCH, CHANNELS // 2, SIDE, SIDE, scale=0.1)
    u = _leaf(BATCH, CHANNELS // 2, SIDE, SIDE, scale=0.1)
    log_scale, shift = _leaf(CHANNELS, scale=0.1), _leaf(CHANNELS, scale=0.1)
    weight = torch.linalg.qr(torch.randn(CHANNELS, CHANNELS))[0].requires_grad_()
    # the 1x1 weights of a CIFAR-10 Wolf's decoder, stacked per size as the models batch them
    stacked = torch.linalg.qr(torch.randn(24, 36, 36))[0].requires_grad_()
    z = _leaf(BATCH, Z_DIM)
    x_a = _leaf(BATCH, CHANNELS // 2, SIDE, SIDE)
    net = CouplingNet2d(CHANNELS // 2, CHANNELS, HIDDEN, Z_DIM)
    nn.init.normal_(net.conv_out.v, std=0.01)  # a trained network's last layer is not zero

    def network(backend: str) -> Callable[[], torch.Tensor]:
        copy = CouplingNet2d(CHANNELS // 2, CHANNELS, HIDDEN, Z_DIM)
        copy.load_state_dict(net.state_dict())
        copy.backend = backend
        return lambda: copy(x_a, z).sum()

    return {
        "cond_bias_elu": (lambda b: lambda: cond_bias_elu(h * 1, bias, backend=b).sum(), [h, bias]),
        "conv1x1_bias_elu": (lambda b: lambda: conv1x1_bias_elu(h, w_mid, bias, backend=b).sum(), [h, w_mid, bias]),
        "coupling_net_rows": (network, [x_a, z]),
        "affine_coupling+actnorm": (
            lambda b: (
                lambda: _sum(affine_coupling(x, mu, u, "continuous", "up", backend=b, actnorm=(log_scale, shift)))
            ),
            [x, mu, u, log_scale, shift],
        ),
        "actnorm_conv1x1": (
            lambda b: lambda: _sum(actnorm_conv1x1(x, log_scale, shift, weight, backend=b)),
            [x, log_scale, shift, weight],
        ),
        "slogdet": (
            lambda b: (
                (lambda: torch.linalg.slogdet(stacked)[1].sum())
                if b == "reference"
                else (lambda: batched_slogdet(stacked)[1].sum())
            ),
            [stacked],
        ),
    }


def _sum(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    y, logdet = pair
    return (y * y).sum() + logdet.sum()


def _step(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor], bf16: bool) -> Callable[[], None]:
    def run() -> None:
        for t in leaves:
            t.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = fn()
        loss.backward()

    return run


def measure(op: str, rounds: int, bf16: bool) -> dict:
    make, leaves = _cases()[op]
    fns, compile_s = {}, {}
    for variant in VARIANTS:
        backend = variant.split("+")[0]
        fn = make(backend)
        if variant.endswith("+compile"):
            fn = torch.compile(fn, fullgraph=False)
        fns[variant] = _step(fn, leaves, bf16)
        start = time.perf_counter()
        fns[variant]()
        fns[variant]()
        compile_s[variant] = time.perf_counter() - start
    times = time_interleaved(fns, rounds, lambda: None)
    base = times["reference+compile"]
    return {
        "op": op,
        "dtype": "bf16 autocast" if bf16 else "float32",
        **{f"{v} ms": median(times[v]) * 1e3 for v in VARIANTS},
        **{f"{v} vs ref+compile": paired_ratio(base, times[v]) for v in VARIANTS},
        "first two calls s (compile)": {v: round(s, 2) for v, s in compile_s.items()},
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks ops_compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="+", default=None, help=f"default: all of {list(_cases())}")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also measure under bfloat16 autocast")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} | {cpu_model()} | {args.threads} threads | "
        f"torch {torch.__version__} | "
        f"batch {BATCH}, {args.rounds} rounds | load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    rows = []
    for bf16 in (False, True) if args.bf16 else (False,):
        for op in args.ops or list(_cases()):
            row = measure(op, args.rounds, bf16)
            rows.append(row)
            ratios = ", ".join(f"{v} {row[f'{v} vs ref+compile']:.2f}x" for v in VARIANTS)
            times = ", ".join(f"{v} {row[f'{v} ms']:.2f}" for v in VARIANTS)
            print(
                f"{op:>24} [{row['dtype']}]: ms {times} | vs reference+compile: {ratios} | "
                f"compile s {row['first two calls s (compile)']}",
                flush=True,
            )
    load = os.getloadavg()
    print(f"load at the end {load[0]:.2f} {load[1]:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
