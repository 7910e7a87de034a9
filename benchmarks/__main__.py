"""``python -m benchmarks NAME [ARGS]``: the one entry point of the timing scripts (``--help`` after a
NAME gives its options). The device check for a CUDA machine is apart: ``bash
benchmarks/gpu_check.sh`` (:mod:`benchmarks.device`)."""

from __future__ import annotations

import runpy
import sys

# NAME -> (module run as the script, what it times)
SCRIPTS = {
    "suite": ("benchmarks.suite", "the models side by side, then the ops; writes RESULTS.md (make bench)"),
    "kernels": ("benchmarks.bench_kernels", "each fused op against its reference, forward + backward"),
    "ops_compile": ("benchmarks.bench_ops_compile", "each cpu-backend op against torch.compile of its reference"),
    "slogdet": ("benchmarks.bench_slogdet", "the batched log-determinant against torch.linalg"),
    "step": ("benchmarks.bench_step", "a whole Wolf training step per backend, against the speed targets"),
    "memory": ("benchmarks.bench_memory", "memory-efficient backprop against the standard one"),
    "profile_step": ("benchmarks.profile_step", "where a training step's time goes (torch.profiler)"),
    "coupling_net": ("benchmarks.bench_coupling_net", "the coupling network's CPU formulations"),
    "cpu_ab": ("benchmarks.bench_cpu_ab", "a whole step with one CPU formulation switched off by name"),
    "normflows": ("benchmarks.bench_normflows", "normflows' Glow against its fused version"),
    "kernel_report": ("benchmarks.kernel_report", "the Triton kernels' machine code per shape (static, no GPU)"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:13} {what}" for name, (_, what) in SCRIPTS.items())
    return f"usage: python -m benchmarks NAME [ARGS]\n\nNAME is one of:\n{rows}\n"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SCRIPTS:
        known = not argv or argv[0] in ("-h", "--help")
        print(usage() if known else f"python -m benchmarks: unknown NAME {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 0 if argv and known else 2
    module, _ = SCRIPTS[argv[0]]
    sys.argv = [f"python -m benchmarks {argv[0]}", *argv[1:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
