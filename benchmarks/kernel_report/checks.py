"""Checks that can fail on the machine code of every Triton kernel a Wolf training step launches, at
benchmark shapes, without a GPU. ``python -m benchmarks.kernel_report.checks`` prints a JSON object
``{check: [failures]}`` and exits 1 when any check fails (tests/test_kernel_machine_code.py runs it).
Shapes: every benchmark shape of the report (CIFAR-10 b64, ImageNet 64 b32, CelebA-HQ 256 b8 and b40).

One step's forward and backward runs through the real launchers on fake tensors (two flow steps per
level: the same distinct launches as the full model); each launch is specialised as Triton's runtime
would (16-byte aligned pointers, ints divisible by 16 or equal to 1) and compiled for sm_80 and sm_90
(GEMMs) or sm_90 (elementwise and coupling kernels), in fp32, fp32 with TF32 allowed and bf16
autocast. Checks: no spills; GEMMs on tensor cores wherever they run bf16 or TF32 operands, and the
coupling network's 1x1 convolution runs TF32 exactly when torch's convolutions do; elementwise and
coupling kernels move >= 90% of their global loads and stores 128 bits at a time at CelebA-HQ 256
shapes; on sm_90 the GEMMs' TF32 and bf16 copies of operands to shared memory (LDGSTS) are >= 80%
128-bit at those shapes wherever the channel counts are multiples of 16; >= 8 warps per SM in theory.
"""

from __future__ import annotations

import json
import sys

from benchmarks.kernel_report.capture import PRECISIONS, Launch, capture_step
from benchmarks.kernel_report.inspect_sass import ARCHS, KernelStats, inspect_all, inspect_launch
from benchmarks.kernel_report.report import is_gemm

SHAPES = (("cifar10_wolf", 64), ("imagenet64_wolf", 32), ("celeba256_wolf", 8), ("celeba256_wolf", 40))
WIDE_SHAPE = "celeba256_wolf"  # where the 128-bit target is set (planes of 64x64 pixels and more)
MIN_WARPS_PER_SM = 8
MIN_WIDE_FRACTION = 0.9
# GEMM operand copies: the 4x4-level launches' 16-pixel tiles hold under 4 elements per thread per copy
MIN_WIDE_COPY_FRACTION = 0.8
ARCH = {a.capability: a for a in ARCHS}

Compiled = list[tuple[str, str, Launch, int, KernelStats]]


def distinct_launches(shapes=SHAPES) -> list[tuple[str, str, Launch]]:
    """``(config, precision, launch)`` for each distinct specialisation of the steps in ``shapes``."""
    seen: dict[tuple, tuple[str, str, Launch]] = {}
    for config, batch in shapes:
        for p in PRECISIONS:
            for launch in capture_step(config, batch, p, shallow=True):
                seen.setdefault((config, launch.compile_key), (config, p.name, launch))
    return list(seen.values())


def compile_all(shapes=SHAPES) -> Compiled:
    jobs = [
        (config, precision, launch, arch.capability)
        for config, precision, launch in distinct_launches(shapes)
        for arch in (ARCHS if is_gemm(launch) else ARCHS[1:])
    ]
    inspect_all([(launch, capability) for _, _, launch, capability in jobs])
    return [(c, p, lc, cap, inspect_launch(lc, cap)) for c, p, lc, cap in jobs]


def _name(launch: Launch, capability: int) -> str:
    return f"{launch.kernel} sm_{capability} {dict(launch.constexprs)} grid {launch.grid}"


def spills(compiled: Compiled) -> list[str]:
    return [
        f"{_name(lc, cap)}: {s.registers} regs, {s.spill_bytes} B local, {s.opcodes.get('LDL/STL', 0)} LDL/STL"
        for _, _, lc, cap, s in compiled
        if s.spill_bytes or s.opcodes.get("LDL/STL", 0)
    ]


def scalar_gemms(compiled: Compiled) -> list[str]:
    failures = []
    for _, _, launch, cap, stats in compiled:
        constexprs = dict(launch.constexprs)
        if not is_gemm(launch):
            continue
        low = str(constexprs.get("DOT", constexprs.get("ACC"))) in ("bf16", "fp16")
        if (low or constexprs["PRECISION"] == "tf32") and not stats.opcodes.get("MMA"):
            failures.append(f"{_name(launch, cap)}: no HMMA/HGMMA")
    for _, precision, launch, cap, _ in compiled:
        tf32 = dict(launch.constexprs).get("PRECISION") == "tf32"
        if launch.kernel.startswith("conv1x1") and precision.startswith("fp32") and tf32 != (precision == "fp32+tf32"):
            failures.append(f"{_name(launch, cap)} in {precision}: TF32 does not follow torch's convolution setting")
    return failures


def narrow_accesses(compiled: Compiled, module: str) -> list[str]:
    """The kernels of ``module`` under MIN_WIDE_FRACTION 128-bit global accesses at WIDE_SHAPE."""
    return [
        f"{_name(lc, cap)}: {s.wide_fraction:.0%} of {s.global_accesses} LDG/STG 128-bit"
        for config, _, lc, cap, s in compiled
        if config == WIDE_SHAPE and lc.kernel.startswith(module + ".") and s.wide_fraction < MIN_WIDE_FRACTION
    ]


def narrow_operand_copies(compiled: Compiled) -> list[str]:
    """GEMM kernels whose sm_90 TF32/bf16 operand copies to shared memory (LDGSTS, summed over the
    launches at WIDE_SHAPE) are under MIN_WIDE_COPY_FRACTION 128-bit. Launches with a channel count that
    is not a multiple of 16 are left out: their weight rows are not 16-byte aligned, so no copy of
    the weight can be 128-bit."""
    totals: dict[str, list[int]] = {}
    for config, precision, launch, cap, stats in compiled:
        constexprs, aligned = dict(launch.constexprs), {name for name, _ in launch.attrs}
        low = str(constexprs.get("DOT", constexprs.get("ACC"))) in ("bf16", "fp16")
        if config != WIDE_SHAPE or cap != 90 or not is_gemm(launch) or not (low or constexprs["PRECISION"] == "tf32"):
            continue
        if not {"C_IN", "C_OUT"} <= aligned:
            continue
        counts = totals.setdefault(f"{launch.kernel} {precision} sm_{cap}", [0, 0])
        counts[0] += stats.opcodes.get("LDGSTS128", 0)
        counts[1] += stats.opcodes.get("LDGSTS", 0)
    return [
        f"{name}: {wide / copies:.0%} of {copies} LDGSTS 128-bit"
        for name, (wide, copies) in totals.items()
        if copies and wide / copies < MIN_WIDE_COPY_FRACTION
    ]


def low_occupancy(compiled: Compiled) -> list[str]:
    return [
        f"{_name(lc, cap)}: {s.warps_per_sm(ARCH[cap])} warps/SM ({s.registers} regs, {s.shared_bytes} B smem, "
        f"{s.num_warps} warps)"
        for _, _, lc, cap, s in compiled
        if s.warps_per_sm(ARCH[cap]) < MIN_WARPS_PER_SM
    ]


CHECKS = {
    "spills": spills,
    "tensor_cores": scalar_gemms,
    "wide_accesses_bias_elu": lambda compiled: narrow_accesses(compiled, "cond_bias_elu"),
    "wide_accesses_coupling": lambda compiled: narrow_accesses(compiled, "affine_coupling"),
    "wide_operand_copies": narrow_operand_copies,
    "occupancy": low_occupancy,
}


def main() -> int:
    compiled = compile_all()
    failures = {name: check(compiled) for name, check in CHECKS.items()}
    failures["compiles"] = len(compiled)
    print(json.dumps(failures, indent=1))
    return int(any(v for k, v in failures.items() if k != "compiles"))


if __name__ == "__main__":
    sys.exit(main())
