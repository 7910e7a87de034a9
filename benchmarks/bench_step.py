"""The step-speed targets in one command: a Wolf training step (forward + backward
+ AdamW) with fastflow's ops against the same model on ``backend="reference"`` (the paper's
plain-PyTorch way), eager and under ``torch.compile`` (with and without bfloat16 autocast: the
strongest plain-PyTorch baselines).

    python -m benchmarks step --processes          # CIFAR-10 Wolf, batch 16, 2 threads
    python -m benchmarks step --processes --rounds 2 --variants reference reference+compile cpu+compile
    python -m benchmarks step --rounds 3 --batch 4 --variants reference cpu cpu+bf16  # one process

One process, one model (its parameters shared by the eager variants, one AdamW each; a compiled or
channels-last variant gets a copy), random uint8 images. The variants take one step each per round,
the order reversed every other round; each speed ratio is the median over rounds of the paired
step-time ratio (baseline time / variant time), so that load from other processes falls on all
alike. ``--processes`` runs each variant in a fresh process every round instead (same seed, same
model, a fresh inductor cache), so that no variant inherits the heap another left behind, and the
first step's time is a cold compilation: compare variants of different precision or compile state
this way. Compiled variants compile the model's repeated blocks
(:func:`fastflow.train.compile.compile_regions`); their first step (compilation) is reported apart
from the step time. Memory: one more step of each variant under :class:`benchmarks._common.StepMemory`
(peak RSS rise above what is resident), plus the resident parameters, gradients and AdamW state.
Prints the ratios and whether each target is met; ``--json`` also writes them to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import StepMemory, cpu_model, median, paired_ratio, time_interleaved
from benchmarks.bench_models import VARIANTS, Case, Resolution, Trainable, fastflow_case, model_config, own_trainable
from fastflow.models import build_model
from fastflow.train.optimizer import adamw

MIB = 2**20
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU flags of native bfloat16 dot products
# (variant, its speed over "reference" must be at least) and the memory bound
SPEED_TARGETS = {"cpu": 1.25, "cpu+bf16": 2.0}
MEMORY_TARGET = ("cpu", 0.8)
# against the strongest plain-PyTorch baselines (torch.compile of the reference model)
BASELINES = ("reference", "reference+compile", "reference+bf16+compile")
STRONG_SPEED_TARGET = 1.25  # fastest fastflow path of a precision / reference(+bf16)+compile
STRONG_MEMORY_BASE, STRONG_MEMORY_TARGET = "reference+bf16+compile", 0.8
DEFAULT_VARIANTS = (
    "reference",
    "reference+compile",
    "reference+bf16+compile",
    "cpu",
    "cpu+compile",
    "cpu+bf16",
    "cpu+bf16+compile",
)
COMPILE_TARGET_S = 90.0  # the first, compiling step of a compiled fastflow variant, cold cache


def cpu_has_bf16() -> bool:
    """Whether the CPU has native bfloat16 dot products (AVX512-BF16 or AMX-BF16). Without them,
    oneDNN has no bfloat16 convolution and torch falls back to a slow path: a bfloat16 3x3 conv at
    [4, 512, 16, 16] took 125 s against 1.05 s in float32 on the AVX2-only AMD EPYC (2026-11-30)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def build(config: str, batch: int, variants: list[str], seed: int = 0) -> list[Case]:
    """The cases of ``variants`` over one initialised model of ``config``, each with its own AdamW."""
    res = Resolution(config.split("_", 1)[0], batch=batch, repeats=1, variants=tuple(variants))
    cfg = model_config(res, config.split("_", 1)[1])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, cfg.in_channels, cfg.image_size, cfg.image_size), generator=gen).to(torch.uint8)
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.initialize(x, generator=torch.Generator().manual_seed(seed))
    cases = []
    shared = Trainable(model, adamw(model.parameters(), lr=1e-5))
    for name in variants:
        trainable = own_trainable(shared, VARIANTS[name], lambda net: adamw(net.parameters(), lr=1e-5))
        if trainable is shared:
            trainable = Trainable(model, adamw(model.parameters(), lr=1e-5))
        cases.append(fastflow_case(cfg.kind, trainable, VARIANTS[name], x, seed, sampled=False))
    return cases


def measure(cases: list[Case], rounds: int) -> dict[str, dict]:
    """Step times over interleaved rounds (after one warm-up step each), then each case's step memory."""
    null = contextlib.nullcontext
    first = {}
    for case in cases:  # the first step compiles the compiled variants' regions
        start = time.perf_counter()
        case.step(null())
        first[case.variant.name] = time.perf_counter() - start
    times = time_interleaved({c.variant.name: (lambda c=c: c.step(null())) for c in cases}, rounds, lambda: None)
    out = {}
    for case in cases:
        with StepMemory("cpu") as memory:
            case.step(null())
        out[case.variant.name] = {
            "step_times_s": times[case.variant.name],
            "step_s": median(times[case.variant.name]),
            "first_step_s": first[case.variant.name],
            "step_mem_mib": None if memory.bytes is None else memory.bytes / MIB,
            "resident_mib": case.trainable.state_bytes() / MIB,
        }
    return out


def measure_in_processes(args: argparse.Namespace) -> dict[str, dict]:
    """As :func:`measure`, but each variant runs in a process of its own every round (the order
    reversed every other round): a warm-up step, ``args.steps`` timed steps (their median is the
    round's time) and one step under :class:`StepMemory`. Nothing is shared between the variants,
    not even the allocator's heap, whose state one variant's steps leave for the next's."""
    per_round: dict[str, list[dict]] = {name: [] for name in args.variants}
    for round_ in range(args.rounds):
        for name in args.variants if round_ % 2 == 0 else reversed(args.variants):
            command = [sys.executable, "-m", "benchmarks.bench_step", "--worker", name, "--config", args.config]
            command += ["--batch", str(args.batch), "--threads", str(args.threads), "--rounds", str(args.steps)]
            with tempfile.TemporaryDirectory() as cache:  # a cold inductor cache: compile time from scratch
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            per_round[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    out = {}
    for name, rounds in per_round.items():
        memories = [r["step_mem_mib"] for r in rounds if r["step_mem_mib"] is not None]
        out[name] = {
            "step_times_s": [r["step_s"] for r in rounds],
            "step_s": median(r["step_s"] for r in rounds),
            "first_step_s": median(r["first_step_s"] for r in rounds),
            "step_mem_mib": median(memories) if memories else None,
            "resident_mib": rounds[0]["resident_mib"],
        }
    return out


def _peak(r: dict) -> float | None:
    return None if r["step_mem_mib"] is None else r["step_mem_mib"] + r["resident_mib"]


def _fastest(results: dict[str, dict], bf16: bool) -> str | None:
    """The fastest fastflow variant (not the reference backend) of that precision, by median step."""
    names = [n for n in results if not n.startswith("reference") and VARIANTS[n].bf16 == bf16]
    return min(names, key=lambda n: results[n]["step_s"], default=None)


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def report(results: dict[str, dict], batch: int) -> list[str]:
    """Lines: per variant img/s, first-step (compile) time, speed and memory against each baseline
    present (eager reference, and the strongest: reference+compile, reference+bf16+compile); then
    each target, met or not."""
    ref = results["reference"]
    baselines = [b for b in BASELINES if b in results]
    lines = []
    for name, r in results.items():
        for base in baselines:
            r[f"vs_{base}"] = paired_ratio(results[base]["step_times_s"], r["step_times_s"])
            if _peak(r) is not None and _peak(results[base]) is not None:
                r[f"peak_vs_{base}"] = _peak(r) / _peak(results[base])
        if r["step_mem_mib"] is not None and ref["step_mem_mib"] is not None:
            r["step_mem_vs_reference"] = r["step_mem_mib"] / ref["step_mem_mib"]
        speeds = ", ".join(f"{r[f'vs_{b}']:.2f}x {b} speed" for b in baselines)
        peaks = ", ".join(f"{r.get(f'peak_vs_{b}', float('nan')):.2f}x {b}" for b in baselines)
        lines.append(
            f"{name:>22}: {batch / r['step_s']:6.2f} img/s, step {r['step_s']:6.2f} s (first step "
            f"{r['first_step_s']:6.1f} s); {speeds}; peak memory {_peak(r) or float('nan'):6.0f} MiB "
            f"= {peaks}"
        )
    for name, target in SPEED_TARGETS.items():
        if name in results:
            got = results[name]["vs_reference"]
            lines.append(f"target {name} >= {target}x reference speed: {got:.2f}x -> {_met(got >= target)}")
    name, bound = MEMORY_TARGET
    if name in results and "peak_vs_reference" in results[name]:
        got = results[name]["peak_vs_reference"]
        lines.append(f"target {name} peak memory <= {bound}x reference: {got:.2f}x -> {_met(got <= bound)}")
    for bf16, base in ((False, "reference+compile"), (True, "reference+bf16+compile")):
        best = _fastest(results, bf16)
        if best is not None and base in results:
            got = results[best][f"vs_{base}"]
            lines.append(
                f"target fastest fastflow {'bf16' if bf16 else 'float32'} path ({best}) >= {STRONG_SPEED_TARGET}x "
                f"{base}: {got:.2f}x -> {_met(got >= STRONG_SPEED_TARGET)}"
            )
        if best is not None and f"peak_vs_{STRONG_MEMORY_BASE}" in results[best]:
            got = results[best][f"peak_vs_{STRONG_MEMORY_BASE}"]
            lines.append(
                f"target {best} peak memory <= {STRONG_MEMORY_TARGET}x {STRONG_MEMORY_BASE}: {got:.2f}x -> "
                f"{_met(got <= STRONG_MEMORY_TARGET)}"
            )
    for name, r in results.items():
        if VARIANTS[name].compile and not name.startswith("reference"):
            got = r["first_step_s"]
            lines.append(
                f"target {name} first step (compilation) <= {COMPILE_TARGET_S:.0f} s: {got:.0f} s -> "
                f"{_met(got <= COMPILE_TARGET_S)}"
            )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cifar10_wolf", help="a bundled config, {dataset}_{kind}")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--processes", action="store_true", help="each variant in a process of its own every round (see --steps)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process with --processes")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # one process's variant
    args = parser.parse_args(argv)
    if args.worker:  # --rounds timed steps of one variant; one JSON line for measure_in_processes
        torch.set_num_threads(args.threads)
        result = measure(build(args.config, args.batch, [args.worker]), args.rounds)[args.worker]
        print(json.dumps(result))
        return {args.worker: result}
    if "reference" not in args.variants:
        parser.error("--variants must include reference (every ratio is taken against it)")
    torch.set_num_threads(args.threads)
    skipped = [v for v in args.variants if VARIANTS[v].bf16 and not cpu_has_bf16()]
    args.variants = [v for v in args.variants if v not in skipped]
    load = os.getloadavg()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} | {cpu_model()} | {os.cpu_count()} cores, {args.threads} threads | "
        f"torch {torch.__version__} | {args.config} batch {args.batch}, {args.rounds} rounds"
        f"{f' of {args.steps} steps in fresh processes' if args.processes else ''} | "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    start = time.perf_counter()
    if args.processes:
        results = measure_in_processes(args)
    else:
        results = measure(build(args.config, args.batch, args.variants), args.rounds)
    lines = report(results, args.batch)
    lines += [
        f"target {name} NOT MEASURED: this CPU has no {' or '.join(BF16_FLAGS)} (bfloat16 convolutions would "
        "run on a fallback ~100x slower than float32)"
        for name in skipped
    ]
    load_end = os.getloadavg()
    lines.append(f"wall {time.perf_counter() - start:.0f} s; load at the end {load_end[0]:.2f} {load_end[1]:.2f}")
    print("\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
