"""``python -m benchmarks kernel_report``: the static kernel report (registers, spills, shared memory,
occupancy, waves, instruction histogram, bytes and FLOP floors) into RESULTS.md.

    python -m benchmarks kernel_report                     # every shape and precision, RESULTS.md
    python -m benchmarks kernel_report --shapes 0 2 --print   # CIFAR-10 b64 and CelebA-HQ 256 b8, stdout only
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

from benchmarks._common import replace_block
from benchmarks.kernel_report import cuda_ext, launch_count, report, targets
from benchmarks.kernel_report.capture import PRECISIONS
from benchmarks.kernel_report.inspect_sass import compiled_count
from fastflow.ops.backends import MIN_TRITON_CAPABILITY

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"


def build(shape_indices: list[int]) -> str:
    start = time.perf_counter()
    captures = report.capture_all([report.SHAPES[i] for i in shape_indices], PRECISIONS)
    machine = report.machine_code_table(captures)
    traffic = report.traffic_table(captures)
    seconds = time.perf_counter() - start
    counts = launch_count.count_all()
    goals = targets.table(captures, launch_count.ratios(counts))
    shapes = ", ".join(report.SHAPES[i].name for i in shape_indices)
    major, minor = MIN_TRITON_CAPABILITY
    text = [
        "## GPU kernels: static analysis (compiled and disassembled, not timed)",
        "",
        f"{datetime.date.today()}, `python -m benchmarks kernel_report`. No GPU: each Triton launch of one Wolf "
        f"training step (forward and backward; shapes {shapes}; fp32 with TF32 off, fp32 with TF32 allowed, bf16 "
        "autocast) is specialised as Triton's runtime would (16-byte pointer alignment, ints divisible by 16, ints "
        "equal to 1) and compiled for sm_80 and sm_90; registers, local (spill) bytes and shared memory from "
        "`cuobjdump -res-usage`, instruction counts (static, not executed) from `nvdisasm`. warps/SM is the "
        "theoretical occupancy of the worst variant; waves = programs / (SMs x resident blocks per SM). "
        f"{compiled_count()} compiles in {seconds:.0f} s. Cards older than sm_{major}{minor} (V100 sm_70, T4 sm_75) "
        "run every op on the cpu backend (`backend='auto'`), no Triton kernel.",
        "",
        "### Targets",
        "",
        *goals,
        "",
        "### Machine code per kernel (all shapes)",
        "",
        *machine,
        "",
        "### Launches, grid and floors per shape (sums over a step's launches; floors at 1.8 TB/s A100, 4.3 TB/s "
        "H200, dense tensor-core peak: A100 312/156, H200 989/494 TFLOP/s bf16/TF32)",
        "",
        *traffic,
        "",
        "### Kernel launches per CIFAR-10 Wolf step, batch 64 (forward + backward; ATen ops a CUDA run launches, "
        "counted on fake tensors, plus Triton launches)",
        "",
        *launch_count.table(counts),
        "",
        "### CUDA extension (`nvcc -Xptxas -v`)",
        "",
        *cuda_ext.table(),
    ]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks kernel_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=int, nargs="+", default=list(range(len(report.SHAPES))),
                        help="indices into " + ", ".join(s.name for s in report.SHAPES))  # fmt: skip
    parser.add_argument("--print", action="store_true", help="print the tables instead of writing RESULTS.md")
    args = parser.parse_args(argv)
    text = build(args.shapes)
    if args.print:
        print(text)
    else:
        replace_block(RESULTS, "kernel-report", text, "Benchmark results")
        print(f"wrote {RESULTS}")
    return text


if __name__ == "__main__":
    main()
