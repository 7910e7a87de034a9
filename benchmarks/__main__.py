"""``python -m benchmarks`` (``make bench``): stock Glow, refined Glow and Wolf side by side, then the
fused ops and the batched log-determinant against their reference ops.

    python -m benchmarks                      # CPU: CIFAR-10 32, ImageNet 64, CelebA-HQ 256 (depth 1/8)
    python -m benchmarks --quick              # tiny configs, one repeat (the smoke test)
    python -m benchmarks --device cuda        # GPU batch sizes: 64 / 32 / 8, backends torch and triton
    python -m benchmarks --rosinality /tmp/rosinality_glow.py   # add the public PyTorch Glow
    python -m benchmarks --resolutions cifar10 --variants torch torch+bf16 --batch 8 --repeats 5
    python -m benchmarks --resolutions cifar10 --models glow --variants torch torch+compile

Writes ``RESULTS.md`` (only its own marked block; other sections are kept), ``results.csv`` and
``throughput.png`` into ``--out`` (default: this directory). The GPU kernels' static analysis (compiled
for sm_80/sm_90 without a GPU, not timed) is ``python -m benchmarks.kernel_report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks import bench_kernels, bench_models, bench_slogdet
from benchmarks._common import machine_info
from benchmarks._report import write_all
from benchmarks.bench_models import VARIANTS, Resolution
from fastflow.config import MODEL_KINDS

HERE = Path(__file__).resolve().parent
# The op benchmarks' ``main(quick, **options)``, with the options each takes.
OP_BENCHMARKS = {
    "bench_kernels": lambda quick, device: bench_kernels.main(quick),
    "bench_slogdet": lambda quick, device: bench_slogdet.main(quick, device=device),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny configs, one repeat, one thread")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--out", type=Path, default=HERE, help="where the result files go")
    parser.add_argument(
        "--rosinality", default=None, help="path of rosinality/glow-pytorch's model.py (read, never copied)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads per process (default: torch's; 1 with --quick)"
    )
    parser.add_argument("--resolutions", nargs="+", default=None, help="e.g. cifar10 imagenet64 celeba256")
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS))
    parser.add_argument("--models", nargs="+", default=None, choices=MODEL_KINDS, help="default: all three")
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every resolution")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats for every resolution")
    parser.add_argument("--depth-divisor", type=int, default=None, help="reduced depth for every resolution")
    parser.add_argument("--skip-ops", action="store_true", help="models only")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace, device: str) -> tuple[Resolution, ...]:
    """The default plan for the device, narrowed and overridden by the command line."""
    plan = bench_models.default_plan(device, args.quick)
    if args.resolutions:
        known = {r.name: r for r in plan}
        plan = tuple(
            known.get(name, Resolution(name, batch=1, repeats=2, variants=("torch",))) for name in args.resolutions
        )
    overrides = {
        "variants": tuple(args.variants) if args.variants else None,
        "batch": args.batch,
        "models": tuple(args.models) if args.models else None,
        "repeats": args.repeats,
        "depth_divisor": args.depth_divisor,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return tuple(dataclasses.replace(r, **overrides) for r in plan)


def run_op_benchmarks(quick: bool, device: str) -> dict[str, list[dict] | str]:
    """The rows of each op benchmark, or a one-line message where it fails."""
    results: dict[str, list[dict] | str] = {}
    for name, run in OP_BENCHMARKS.items():
        print(f"\n== {name} ==", flush=True)
        try:
            results[name] = run(quick, device)
        except Exception as err:  # a failing op benchmark is reported; the model rows are still written
            results[name] = f"failed: {type(err).__name__}: {err}"
            print(results[name], flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    plan = make_plan(args, device)
    info = machine_info(device)
    start = time.perf_counter()
    print(
        f"{info['date']} | {info['cpu']} | {info['cores']} cores | {info['device']} | torch {info['torch']} | "
        f"load {info['load_average']}",
        flush=True,
    )
    rows = bench_models.main(args.quick, device, args.rosinality, threads, plan)
    ops = {} if args.skip_ops else run_op_benchmarks(args.quick, device)
    info["wall_s"] = time.perf_counter() - start
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    command = "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:])
    print("\n" + write_all(args.out, info, plan, rows, ops, command.strip()))
    print(f"\nwrote {args.out / 'RESULTS.md'}, results.csv and throughput.png in {info['wall_s']:.0f} s")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
