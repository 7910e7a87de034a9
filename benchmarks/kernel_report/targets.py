"""The static report's targets, each met or not with its figure, from the same compiles as the tables.

Targets: no spills; tensor-core instructions in every GEMM that runs bf16 or TF32 operands; >= 90%
128-bit global loads and stores in the elementwise and coupling kernels at CelebA-HQ 256 (sm_90);
128-bit operand copies to shared memory in the sm_90 TF32 and bf16 GEMMs;
>= 8 warps per SM in theory; launches of at least 2 waves on 132 SMs at CelebA-HQ 256 batch 8
(measured as the share of each kernel's bytes moved by such launches); at most half the reference
backend's kernel launches per CIFAR-10 Wolf step.
"""

from __future__ import annotations

from benchmarks.kernel_report import checks
from benchmarks.kernel_report.inspect_sass import ARCHS, inspect_launch
from benchmarks.kernel_report.report import MIN_WAVES, TRAFFIC_PRECISIONS, Capture, filled_share, is_gemm, waves

WAVES_SHAPE = "CelebA-HQ 256 b8"
MAX_LAUNCH_RATIO = 0.5


def compiled(captures: list[Capture]) -> checks.Compiled:
    """``(config, precision, launch, capability, stats)`` of each distinct launch of ``captures``, on
    the targets the checks compile for (GEMMs on sm_80 and sm_90, the other kernels on sm_90)."""
    rows = []
    for cap in captures:
        for launch in {lc.compile_key: lc for lc in cap.launches}.values():
            for arch in ARCHS if is_gemm(launch) else ARCHS[1:]:
                stats = inspect_launch(launch, arch.capability)
                rows.append((cap.shape.config, cap.precision.name, launch, arch.capability, stats))
    return rows


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


WIDE_MODULES = ("cond_bias_elu", "affine_coupling")  # the elementwise and coupling kernels


def _wide_figure(rows: checks.Compiled) -> str:
    worst: dict[str, float] = {}
    for config, _, launch, _, stats in rows:
        if config == checks.WIDE_SHAPE and launch.kernel.split(".")[0] in WIDE_MODULES:
            worst[launch.kernel] = min(worst.get(launch.kernel, 1.0), stats.wide_fraction)
    return ", ".join(f"{k} {v:.0%}" for k, v in sorted(worst.items(), key=lambda kv: kv[1]))


def _waves_rows(captures: list[Capture]) -> tuple[dict[str, float], float]:
    """Per kernel, the share of its bytes moved at >= MIN_WAVES waves on H100 at WAVES_SHAPE, and over all."""
    h100 = ARCHS[1]
    per_kernel: dict[str, list] = {}
    for cap in captures:
        if cap.shape.name == WAVES_SHAPE and cap.precision.name in TRAFFIC_PRECISIONS:
            for launch in cap.launches:
                per_kernel.setdefault(launch.kernel, []).append(launch)
    shares, filled, total = {}, 0.0, 0
    for kernel, launches in per_kernel.items():
        launch_waves = [waves(lc, inspect_launch(lc, h100.capability), h100) for lc in launches]
        shares[kernel] = filled_share(launches, launch_waves)
        moved = sum(lc.bytes_moved for lc in launches)
        filled += shares[kernel] * moved
        total += moved
    return shares, filled / total if total else 1.0


def table(captures: list[Capture], launch_ratios: dict[str, float]) -> list[str]:
    """Markdown rows: target, figure, met or not. ``launch_ratios``: precision -> triton / reference."""
    rows = compiled(captures)
    spills = checks.spills(rows)
    scalar = checks.scalar_gemms(rows)
    narrow = [f for module in WIDE_MODULES for f in checks.narrow_accesses(rows, module)]
    copies = checks.narrow_operand_copies(rows)
    low = checks.low_occupancy(rows)
    min_warps = min(s.warps_per_sm(checks.ARCH[c]) for *_, c, s in rows) if rows else 0
    shares, overall = _waves_rows(captures)
    worst = sorted(shares.items(), key=lambda kv: kv[1])[:3]
    ratios = ", ".join(f"{p} {r:.2f}x" for p, r in launch_ratios.items())
    lines = ["| target | figure | |", "|---|---|---|"]
    lines += [
        f"| 0 spills | {len(spills)} of {len(rows)} (shape, variant, arch) compiles spill | {_met(not spills)} |",
        f"| tensor cores in every bf16 / TF32 GEMM | {len(scalar)} without HMMA/HGMMA | {_met(not scalar)} |",
        f"| >= {checks.MIN_WIDE_FRACTION:.0%} 128-bit LDG/STG, elementwise and coupling kernels, CelebA-HQ 256, "
        f"sm_90 | worst per kernel: {_wide_figure(rows)} | {_met(not narrow)} |",
        f"| K-major (128-bit) operand copies in the sm_90 TF32 / bf16 GEMMs: >= {checks.MIN_WIDE_COPY_FRACTION:.0%} "
        f"of LDGSTS at CelebA-HQ 256 | {'; '.join(copies) or 'every GEMM kernel'} | {_met(not copies)} |",
        f"| >= {checks.MIN_WARPS_PER_SM} warps per SM | min {min_warps} | {_met(not low)} |",
        f"| >= {MIN_WAVES} waves on 132 SMs at {WAVES_SHAPE} | {overall:.0%} of the bytes moved at >= {MIN_WAVES} "
        f"waves; lowest: {', '.join(f'{k} {v:.0%}' for k, v in worst)} | {_met(overall == 1.0)} |",
        f"| launches per CIFAR-10 Wolf step <= {MAX_LAUNCH_RATIO}x reference | {ratios} "
        f"| {_met(all(r <= MAX_LAUNCH_RATIO for r in launch_ratios.values()))} |",
    ]
    return lines
