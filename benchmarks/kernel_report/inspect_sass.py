"""Compile a recorded launch for an NVIDIA target and read its machine code: registers, spills and
shared memory (``cuobjdump -res-usage``), an instruction histogram (``nvdisasm``) and the theoretical
occupancy that follows. Compiles go through Triton's own on-disk cache, and each distinct
specialisation is compiled once per target (:func:`inspect_launch` is memoised on the compile key).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import subprocess
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks.kernel_report.capture import Launch

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@dataclasses.dataclass(frozen=True)
class Arch:
    """What bounds occupancy on one NVIDIA architecture (per SM), and its SM count for waves."""

    name: str
    capability: int
    sms: int
    max_warps: int = 64
    max_blocks: int = 32
    registers: int = 65536
    shared_bytes: int = 0  # usable shared memory per SM
    reserved_shared: int = 1024  # per block


ARCHS = (
    Arch("A100 (sm_80)", 80, 108, shared_bytes=164 * 1024),
    Arch("H100/H200 (sm_90)", 90, 132, shared_bytes=228 * 1024),
)

# Opcode classes of the histogram: name -> pattern on the SASS mnemonic (with its modifiers).
OPCODES = {
    "MMA": r"^(HMMA|HGMMA|WGMMA)",
    "LDG128": r"^LDG\.(.*\.)?128(\.|$)",  # the .128 width, not the .LTC128B cache hint
    "LDG": r"^LDG(\.|$)",
    "STG128": r"^STG\.(.*\.)?128(\.|$)",
    "STG": r"^STG(\.|$)",
    "LDGSTS128": r"^LDGSTS\.(.*\.)?128(\.|$)",
    "LDGSTS": r"^LDGSTS",
    "TMA": r"^(UTMALDG|UTMASTG)",
    "LDL/STL": r"^(LDL|STL)",
    "MUFU": r"^MUFU",
    "BAR": r"^BAR",
    "FFMA": r"^FFMA",
}


@dataclasses.dataclass(frozen=True)
class KernelStats:
    """One compiled kernel on one architecture."""

    registers: int
    spill_bytes: int  # local memory per thread (ptxas puts only spills there in these kernels)
    shared_bytes: int  # per block, static and dynamic
    num_warps: int
    opcodes: dict[str, int]  # OPCODES class -> static instruction count (128-bit ones also under LDG/STG)

    def blocks_per_sm(self, arch: Arch) -> int:
        per_warp = -(-self.registers * 32 // 256) * 256  # registers are allocated per warp, 256 at a time
        by_regs = (arch.registers // per_warp) // self.num_warps if per_warp else arch.max_blocks
        by_warps = arch.max_warps // self.num_warps
        by_smem = arch.shared_bytes // (self.shared_bytes + arch.reserved_shared)
        return max(0, min(by_regs, by_warps, by_smem, arch.max_blocks))

    def warps_per_sm(self, arch: Arch) -> int:
        return self.blocks_per_sm(arch) * self.num_warps

    @property
    def global_accesses(self) -> int:
        return self.opcodes.get("LDG", 0) + self.opcodes.get("STG", 0)

    @property
    def wide_fraction(self) -> float:
        """Share of global loads and stores that are 128-bit (1.0 when there are none)."""
        total = self.global_accesses
        return (self.opcodes.get("LDG128", 0) + self.opcodes.get("STG128", 0)) / total if total else 1.0


def _tool(name: str, *args: str) -> str:
    return subprocess.run([str(BIN / name), *args], check=True, capture_output=True, text=True).stdout


def _opcode_histogram(sass: str) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*(?:/\*[0-9a-f]+\*/)?\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if not m or "/*" not in line:
            continue
        mnemonic = m.group(1)
        for name, pattern in OPCODES.items():
            if re.search(pattern, mnemonic):
                counts[name] += 1
                if name.endswith("128"):
                    continue  # also counted under the plain class below
                break
    return dict(counts)


def compile_launch(launch: Launch, capability: int):
    """``triton.compile`` of the launch's specialisation for ``sm_<capability>``."""
    signature = dict(launch.signature)
    names = [p.name for p in launch.fn.params]
    constexprs = {(names.index(k),): v for k, v in launch.constexprs}
    attrs = {(names.index(k),): [list(a) for a in v] for k, v in launch.attrs}
    src = ASTSource(launch.fn, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=dict(launch.options))


_cache: dict[tuple, KernelStats] = {}


def _inspect(launch: Launch, capability: int) -> KernelStats:
    compiled = compile_launch(launch, capability)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = _tool("cuobjdump", "-res-usage", f.name)
        sass = _tool("nvdisasm", "-c", f.name)
    field = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
    return KernelStats(
        registers=field.get("REG", 0),
        spill_bytes=field.get("LOCAL", 0) + field.get("STACK", 0),
        shared_bytes=max(field.get("SHARED", 0), compiled.metadata.shared),
        num_warps=compiled.metadata.num_warps,
        opcodes=_opcode_histogram(sass),
    )


def inspect_launch(launch: Launch, capability: int) -> KernelStats:
    """The :class:`KernelStats` of ``launch`` on ``sm_<capability>`` (compiled once per distinct key)."""
    key = (launch.compile_key, capability)
    if key not in _cache:
        _cache[key] = _inspect(launch, capability)
    return _cache[key]


def compiled_count() -> int:
    """How many (specialisation, target) compiles this process has inspected."""
    return len(_cache)


_pending: list[tuple[Launch, int]] = []  # what forked workers compile (inherited, never pickled)


def _inspect_pending(index: int) -> KernelStats:
    launch, capability = _pending[index]
    return _inspect(launch, capability)


def inspect_all(jobs: list[tuple[Launch, int]], workers: int | None = None) -> None:
    """Compile and inspect every ``(launch, capability)`` not yet inspected, in ``workers`` forked
    processes (default: the CPUs this process may use, at most 8), filling the cache that
    :func:`inspect_launch` reads."""
    todo = {}
    for launch, capability in jobs:
        key = (launch.compile_key, capability)
        if key not in _cache:
            todo.setdefault(key, (launch, capability))
    workers = workers or min(8, len(os.sched_getaffinity(0)))
    if workers < 2 or len(todo) < 2:
        for key, (launch, capability) in todo.items():
            _cache[key] = _inspect(launch, capability)
        return
    _pending[:] = todo.values()
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for key, stats in zip(todo, pool.map(_inspect_pending, range(len(_pending)))):
                _cache[key] = stats
    finally:
        _pending.clear()
