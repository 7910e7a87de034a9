"""Device-check stage: whole training steps (run by ``python -m benchmarks.device.gpu_check``; see there).

    python -m benchmarks.device.steps --out steps.csv [--budget S] [--dry-run]

Cases in priority order (CASES): CIFAR-10 Wolf batch 64, stock Glow batch 64, CelebA-HQ 256 Wolf batch 8
with memory-efficient backprop, then the largest CelebA-HQ 256 Wolf batch that fits (the paper trains
at 40). Variants: each op backend (``BACKENDS`` less "auto"), ``+bf16`` (autocast for the coupling
networks), ``+graph`` (the whole step, AdamW included, captured in a CUDA graph and replayed) and
``+compile`` (the model's repeated blocks compiled, :func:`fastflow.train.compile.compile_regions`, on
a model of its own): ``reference+compile`` and ``reference+bf16+compile`` are the strongest
plain-PyTorch baselines. A compiled variant's warm-up (its compilation) is reported apart as
``warmup_s``; it starts only while at least ``COMPILE_CAP_S`` seconds of the budget are left.
Each row: median step time over timed AdamW steps (CUDA events), img/s, peak memory, the GPU-busy time
of one profiled step (the sum of its kernels' device time: a step far above it is launch-bound), and
whether one step ran under ``torch.cuda.set_sync_debug_mode("error")`` without a host sync. Cases stop
when ``--budget`` seconds have passed; a failing variant (out of memory, a capture that fails) is a
row with its error, not the end of the stage. ``--dry-run``: tiny configs at batch 2 on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from benchmarks._common import write_csv

COMPILE_CAP_S = 150.0  # budget left that a compiled variant needs to start (its compilation)


@dataclass(frozen=True)
class StepCase:
    config: str
    batch: int
    memory_efficient: bool
    variants: tuple[str, ...]  # "<backend>[+bf16][+graph]"


def _backends() -> list[str]:
    from fastflow.ops.backends import BACKENDS

    return [b for b in BACKENDS if b != "auto"]


def cases(dry_run: bool) -> tuple[list[StepCase], str, tuple[int, ...]]:
    """(cases, the config of the largest-batch search, the batches it tries)."""
    fused = [b for b in _backends() if b not in ("cpu", "reference")]  # the backends with fused kernels
    wolf = tuple(_backends()) + tuple(f"{b}+bf16" for b in fused) + tuple(f"{b}+graph" for b in fused)
    compiled = ("reference+compile", "reference+bf16+compile")
    compiled += tuple(f"{b}+compile" for b in fused) + tuple(f"{b}+bf16+compile" for b in fused)
    if dry_run:  # one interpreted (slow) step with a fused backend, the rest on the cpu backend
        dry_wolf = ("cpu",) + tuple(f"{b}+graph" for b in fused)
        tiny = [
            StepCase("tiny_wolf", 1, False, dry_wolf),
            StepCase("tiny_glow", 1, False, tuple(f"{b}+bf16" for b in fused)),
        ]
        return tiny + [StepCase("tiny_wolf", 1, True, ("cpu",))], "tiny_wolf", (1,)
    return (
        [
            StepCase("cifar10_wolf", 64, False, wolf + compiled),
            StepCase("cifar10_glow", 64, False, tuple(_backends())),
            StepCase("celeba256_wolf", 8, True, tuple(_backends()) + tuple(f"{b}+bf16" for b in fused)),
            # memory-efficient chains run their layers eagerly: the compiled variants train without them
            StepCase("celeba256_wolf", 8, False, ("reference",) + compiled + tuple(f"{b}+bf16" for b in fused)),
        ],
        "celeba256_wolf",
        (16, 24, 32, 40, 48, 64),
    )


class Runner:
    """One model on the device with its optimiser and a fixed uint8 batch."""

    def __init__(self, config: str, batch: int, memory_efficient: bool, device: str) -> None:
        from fastflow.models import build_model

        torch.manual_seed(0)
        self.device = device
        self.model = build_model(config).to(device)
        cfg = self.model.config
        gen = torch.Generator().manual_seed(0)
        shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
        self.x = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(device)
        self.model.initialize(self.x)
        if memory_efficient:
            self.model.set_memory_efficient(True)
        self.compiled = False
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, capturable=device == "cuda")

    def step_fn(self, variant: str):
        backend, *flags = variant.split("+")
        self.model.set_backend(backend)
        if "compile" in flags and not self.compiled:  # a runner of its own (see main)
            from fastflow.train.compile import compile_regions

            compile_regions(self.model, "default")
            self.compiled = True

        def step() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=False)
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled="bf16" in flags):
                loss = self.model.loss(self.x)["loss"]
            loss.backward()
            self.optimizer.step()
            return loss.detach()

        return step, "graph" in flags

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def _capture(step):
    """The step captured in a CUDA graph (after warm-up on a side stream); returns a replay function."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _busy_ms(step) -> float | None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    total = sum(getattr(e, "self_device_time_total", 0.0) for e in prof.key_averages())
    return total / 1e3


def _sync_free(step) -> str:
    """'yes' if one step runs under set_sync_debug_mode("error"), else why not."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        return "yes"
    except RuntimeError as exc:
        return f"no: {str(exc).splitlines()[0][:120]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")


def time_variant(runner: Runner, variant: str, repeats: int, warmups: int = 2) -> dict:
    step, graphed = runner.step_fn(variant)
    cuda = runner.device == "cuda"
    row: dict = {}
    start = time.perf_counter()
    if graphed:
        if not cuda:
            return {"error": "skipped: CUDA graphs need a CUDA device"}
        step = _capture(step)
    for _ in range(warmups):
        step()
    runner.sync()
    row["warmup_s"] = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            step()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - t))
    ms = statistics.median(times)
    row |= {"step_ms": ms, "img_s": runner.x.shape[0] / (ms / 1e3)}
    if cuda:
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["gpu_busy_ms"] = _busy_ms(step)
        row["sync_free"] = "graph" if graphed else _sync_free(step)
    runner.model.read_device_checks()
    return row


def largest_batch(config: str, batches: tuple[int, ...], device: str, budget_end: float) -> list[dict]:
    """Memory-efficient Wolf at growing batches with the first fused backend until one does not fit."""
    rows = []
    fused = next((b for b in _backends() if b not in ("cpu", "reference")), "cpu")
    variant = "cpu" if device == "cpu" else fused  # the interpreter is too slow for a dry run
    for batch in batches:
        if time.perf_counter() > budget_end:
            break
        row = {"config": config, "batch": batch, "memory_efficient": True, "variant": f"{variant} (largest batch)"}
        try:
            runner = Runner(config, batch, True, device)
            row |= time_variant(
                runner, variant, repeats=1 if device == "cpu" else 2, warmups=0 if device == "cpu" else 2
            )
            del runner
        except torch.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {str(exc).splitlines()[0][:100]}"
        rows.append(row)
        print(_line(row), flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
        if "error" in row:
            break
    return rows


def _line(row: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device.steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, default=200.0, help="seconds; later cases are skipped")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    end = time.perf_counter() + args.budget
    step_cases, search_config, batches = cases(args.dry_run)
    rows, runner = [], None
    for case in step_cases:
        for variant in case.variants:
            row = {"config": case.config, "batch": case.batch, "memory_efficient": case.memory_efficient}
            row["variant"] = variant
            compiled = "compile" in variant.split("+")
            if time.perf_counter() > end - (COMPILE_CAP_S if compiled else 0.0):
                row["error"] = "skipped: stage budget spent" + (" (compilation cap)" if compiled else "")
            else:
                try:
                    key = (case, variant if compiled else None)  # a compiled variant compiles its own model
                    runner = runner if getattr(runner, "key", None) == key else Runner(*_key(case), device)
                    runner.key = key
                    row |= time_variant(runner, variant, *((1, 0) if args.dry_run else (5, 2)))
                except Exception as exc:  # out of memory, a failed capture: a row, not a crash
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                    runner = None
                    if device == "cuda":
                        torch.cuda.empty_cache()
            rows.append(row)
            print(_line(row), flush=True)
            write_csv(args.out, rows)  # after every row: a stage stopped at its cap keeps what it measured
        runner = None
    rows += largest_batch(search_config, batches, device, end)
    write_csv(args.out, rows)
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


def _key(case: StepCase) -> tuple[str, int, bool]:
    return case.config, case.batch, case.memory_efficient


if __name__ == "__main__":
    sys.exit(main())
