"""The static analysis of every Triton kernel a training step launches, as markdown tables.

For each benchmark shape (:data:`SHAPES`) and precision (:data:`capture.PRECISIONS`) one Wolf step's
forward and backward is run through the Triton launchers on fake tensors (:mod:`capture`); each
distinct specialisation is compiled for sm_80 and sm_90 and its machine code read (:mod:`inspect_sass`).
Nothing here is a timing: the floors are what the bytes and FLOPs of a launch cost at a card's peak.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from benchmarks.kernel_report.capture import PRECISIONS, Launch, Precision, capture_step
from benchmarks.kernel_report.inspect_sass import ARCHS, Arch, KernelStats, inspect_all, inspect_launch


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    config: str
    batch: int


SHAPES = (
    Shape("CIFAR-10 b64", "cifar10_wolf", 64),
    Shape("ImageNet 64 b32", "imagenet64_wolf", 32),
    Shape("CelebA-HQ 256 b8", "celeba256_wolf", 8),
    Shape("CelebA-HQ 256 b40", "celeba256_wolf", 40),
)
# Peaks the floors divide by: HBM bytes/s, and dense tensor-core FLOP/s for bf16 and TF32.
HBM = {"A100": 1.8e12, "H200": 4.3e12}
TENSOR_PEAK = {"A100": {"bf16": 312e12, "tf32": 156e12}, "H200": {"bf16": 989e12, "tf32": 494e12}}
# Kernels that only stream memory (the 128-bit target applies to them); the rest are GEMMs.
GEMM_KERNELS = (
    "_pixel_affine_kernel",
    "_outer_sum_kernel",
    "_forward_kernel",
    "_grad_input_kernel",
    "_grad_weight_kernel",
)


def is_gemm(launch: Launch) -> bool:
    return launch.kernel.split(".")[1] in GEMM_KERNELS


@dataclasses.dataclass
class Capture:
    """The launches of one (shape, precision) step."""

    shape: Shape
    precision: Precision
    launches: list[Launch]


TRAFFIC_PRECISIONS = ("fp32+tf32", "bf16")  # the traffic table's; the others are captured shallow


def capture_all(shapes=SHAPES, precisions=PRECISIONS) -> list[Capture]:
    """Every step's launches: full depth for TRAFFIC_PRECISIONS (whose sums the traffic table reports),
    two flow steps per level otherwise (the same distinct launches, for the machine-code table)."""
    return [
        Capture(s, p, capture_step(s.config, s.batch, p, shallow=p.name not in TRAFFIC_PRECISIONS))
        for s in shapes
        for p in precisions
    ]


def waves(launch: Launch, stats: KernelStats, arch: Arch) -> float:
    """Programs over what the SMs of ``arch`` hold at once."""
    resident = stats.blocks_per_sm(arch) * arch.sms
    return launch.programs / resident if resident else float("inf")


MIN_WAVES = 2  # a launch with fewer waves leaves SMs idle for part of its tail


def filled_share(launches: list[Launch], launch_waves: list[float]) -> float:
    """The share of the bytes of ``launches`` moved by launches of at least MIN_WAVES waves."""
    total = sum(lc.bytes_moved for lc in launches)
    filled = sum(lc.bytes_moved for lc, w in zip(launches, launch_waves) if w >= MIN_WAVES)
    return filled / total if total else 1.0


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def machine_code_table(captures: list[Capture]) -> list[str]:
    """One row per (kernel, precision, arch), over every shape's distinct specialisations; instruction
    counts are static means per variant ("128-bit": the share of that kind of access that is 128-bit)."""
    inspect_all([(lc, arch.capability) for cap in captures for lc in cap.launches for arch in ARCHS])
    rows: dict[tuple, list[tuple[Launch, KernelStats]]] = defaultdict(list)
    for cap in captures:
        for launch in {lc.compile_key: lc for lc in cap.launches}.values():
            for arch in ARCHS:
                rows[(launch.kernel, cap.precision.name, arch.name)].append(
                    (launch, inspect_launch(launch, arch.capability))
                )
    lines = [
        "| kernel | precision | arch | variants | regs (max) | spill B (max) | smem KB (max) | warps/SM (min) "
        "| warps | MMA | LDG 128-bit | STG 128-bit | LDGSTS 128-bit | LDL+STL (max) | MUFU | BAR |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for (kernel, prec, arch_name), items in sorted(rows.items()):
        arch = next(a for a in ARCHS if a.name == arch_name)
        keys = {(lc.compile_key) for lc, _ in items}
        stats = [s for _, s in items]
        worst = min(stats, key=lambda s: s.warps_per_sm(arch))

        def mean(name: str, stats: list[KernelStats] = stats) -> str:
            return _fmt(sum(s.opcodes.get(name, 0) for s in stats) / len(stats), 0)

        def wide(name: str, stats: list[KernelStats] = stats) -> str:
            total = sum(s.opcodes.get(name, 0) for s in stats)
            return (
                f"{100 * sum(s.opcodes.get(name + '128', 0) for s in stats) / total:.0f}% of {mean(name)}"
                if total
                else "-"
            )

        lines.append(
            f"| {kernel} | {prec} | {arch_name} | {len(keys)} | {max(s.registers for s in stats)} "
            f"| {max(s.spill_bytes for s in stats)} | {_fmt(max(s.shared_bytes for s in stats) / 1024)} "
            f"| {worst.warps_per_sm(arch)} | {'/'.join(sorted({str(s.num_warps) for s in stats}))} "
            f"| {mean('MMA')} | {wide('LDG')} | {wide('STG')} | {wide('LDGSTS')} "
            f"| {max(s.opcodes.get('LDL/STL', 0) for s in stats)} | {mean('MUFU')} | {mean('BAR')} |"
        )
    return lines


def traffic_table(captures: list[Capture]) -> list[str]:
    """One row per (shape, kernel, precision in TRAFFIC_PRECISIONS): launches, grid, waves, bytes, floors."""
    lines = [
        "| shape | kernel | precision | launches | programs (min-max) | waves A100 (min) | waves H100 (min) "
        "| waves H100 (largest launch) | bytes at >= 2 waves H100 "
        "| MB moved | floor A100 us | floor H200 us | GFLOP | FLOP floor A100 us | FLOP floor H200 us |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    a100, h100 = ARCHS
    for cap in captures:
        if cap.precision.name not in TRAFFIC_PRECISIONS:
            continue
        by_kernel: dict[str, list[Launch]] = defaultdict(list)
        for launch in cap.launches:
            by_kernel[launch.kernel].append(launch)
        tc = "bf16" if cap.precision.bf16 else "tf32"
        for kernel, launches in sorted(by_kernel.items()):
            moved = sum(lc.bytes_moved for lc in launches)
            flops = sum(lc.flops for lc in launches)
            w80 = min(waves(lc, inspect_launch(lc, 80), a100) for lc in launches)
            w90 = [waves(lc, inspect_launch(lc, 90), h100) for lc in launches]
            largest = max(range(len(launches)), key=lambda i: launches[i].bytes_moved)
            progs = [lc.programs for lc in launches]
            lines.append(
                f"| {cap.shape.name} | {kernel} | {cap.precision.name} | {len(launches)} | {min(progs)}-{max(progs)} "
                f"| {_fmt(w80, 2)} | {_fmt(min(w90), 2)} | {_fmt(w90[largest], 1)} "
                f"| {100 * filled_share(launches, w90):.0f}% "
                f"| {_fmt(moved / 1e6)} | {_fmt(moved / HBM['A100'] * 1e6)} "
                f"| {_fmt(moved / HBM['H200'] * 1e6)} | {_fmt(flops / 1e9, 2)} "
                f"| {_fmt(flops / TENSOR_PEAK['A100'][tc] * 1e6)} | {_fmt(flops / TENSOR_PEAK['H200'][tc] * 1e6)} |"
            )
    return lines
