"""Batched log-determinants: forward + backward of log|det W| for every invertible matrix of a model.

For each model config the weights are the decoder's 1x1 convolutions (including the split priors')
and the z-prior's invertible linears, grouped by size n as the models group them. Three ways to get
sum(log|det W|) and its gradient are timed side by side:

- ``torch batched``: one ``torch.linalg.slogdet`` call per size (float32, as the models run);
- ``torch loop``: one ``torch.linalg.slogdet`` call per matrix (per-layer weights);
- ``fastflow``: one ``fastflow.ops.batched_slogdet`` call per size (float64 inside).

Each time is the median over rounds of the mean over calls, in milliseconds, on the weights' device
with torch's thread count; the methods take turns within each round, and the speedup is the median
over rounds of the paired ratio (torch batched / fastflow). ``--clock cpu`` measures the process's CPU
time instead of wall time, which on a busy shared machine with ``--threads 1`` is the time the work
itself took. The error columns are max |log|det W| - float64 truth| over all matrices; a method that
raises is timed as nan.

    python -m benchmarks slogdet [--quick] [--threads N] [--device cpu|cuda] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from benchmarks._common import paired_ratio

# Size n -> number of matrices: decoder 1x1 convs (with the split priors') and z-prior linears.
CONFIGS: dict[str, tuple[dict[int, int], dict[int, int]]] = {
    "cifar10_wolf": ({3: 2, 12: 7, 9: 7, 24: 7, 18: 7, 48: 4}, {64: 2}),
    "imagenet64_wolf": ({3: 2, 12: 9, 9: 9, 24: 9, 18: 9, 48: 7, 36: 7, 96: 4}, {128: 2}),
    "lsun128_wolf": ({3: 2, 12: 17, 9: 17, 24: 17, 18: 17, 48: 9, 36: 9, 96: 5, 72: 5, 192: 2}, {256: 2}),
    "celeba256_wolf": (
        {3: 2, 12: 13, 9: 13, 24: 11, 18: 11, 48: 9, 36: 9, 96: 5, 72: 5, 192: 3, 144: 3, 384: 1},
        {256: 2},
    ),
}


def matrix_counts(config: str) -> dict[int, int]:
    """Size n -> number of n x n matrices of ``config`` (decoder and prior together)."""
    decoder, prior = CONFIGS[config]
    counts = dict(decoder)
    for n, count in prior.items():
        counts[n] = counts.get(n, 0) + count
    return counts


def make_weights(counts: dict[int, int], device: str, seed: int = 0) -> dict[int, torch.Tensor]:
    """Size n -> float32 weights ``[count, n, n]``: random orthogonal (the models' initialisation)
    plus a 0.3 / sqrt(n) Gaussian perturbation, as after some training."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for n, count in counts.items():
        q = torch.linalg.qr(torch.randn(count, n, n, generator=generator, dtype=torch.float64))[0]
        w = q + 0.3 / n**0.5 * torch.randn(count, n, n, generator=generator, dtype=torch.float64)
        weights[n] = w.float().to(device)
    return weights


def _torch_batched(groups: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.linalg.slogdet(w)[1].sum() for w in groups)


def _torch_loop(layers: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.linalg.slogdet(w)[1] for w in layers)


def _fastflow(groups: list[torch.Tensor]) -> torch.Tensor:
    from fastflow.functional import batched_slogdet

    return sum(batched_slogdet(w)[1].sum() for w in groups)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_methods(
    methods: dict[str, Callable[[], torch.Tensor]], device: str, calls: int, rounds: int, clock: str = "wall"
) -> dict[str, list[float]]:
    """Mean ms of ``total().backward()`` per method and round, after a warm-up; the methods take
    turns within each round, in reversed order every other round, so that load from other processes
    falls on all of them alike. A method that raises gets no times (and a printed note)."""
    now = CLOCKS[clock]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run(total: Callable[[], torch.Tensor]) -> None:
        for _ in range(calls):
            total().backward()

    times: dict[str, list[float]] = {name: [] for name in methods}
    working = {}
    for name, total in methods.items():
        try:
            run(total)
            working[name] = total
        except RuntimeError as exc:  # torch's LU can fail outright (see max_logdet_error)
            print(f"{name} failed: {str(exc).splitlines()[0]}")
    order = list(working.items())
    for round_ in range(rounds):
        for name, total in order if round_ % 2 == 0 else order[::-1]:
            sync()
            start = now()
            run(total)
            sync()
            times[name].append((now() - start) / calls * 1e3)
    return times


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """torch on one thread inside the block."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def max_logdet_error(weights: dict[int, torch.Tensor], logdet: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """max |logdet(W) - float64 truth| over all matrices of ``weights``. The truth is computed on one
    thread: with two, MKL's LU in torch 2.14.1 is wrong for n >= 160 on the AMD EPYC development
    machines (which the torch columns then show)."""
    error = 0.0
    with torch.no_grad():
        for w in weights.values():
            with single_thread():
                truth = torch.linalg.slogdet(w.double().cpu())[1]
            error = max(error, (logdet(w).double().cpu() - truth).abs().max().item())
    return error


def bench_config(config: str, device: str, calls: int, rounds: int, clock: str = "wall") -> dict:
    """Times and errors of the three methods on the matrices of ``config``."""
    from fastflow.functional import batched_slogdet

    weights = make_weights(matrix_counts(config), device)
    groups = [w.clone().requires_grad_() for w in weights.values()]
    layers = [m.clone().requires_grad_() for w in weights.values() for m in w]
    times = time_methods(
        {
            "torch batched": lambda: _torch_batched(groups),
            "torch loop": lambda: _torch_loop(layers),
            "fastflow": lambda: _fastflow(groups),
        },
        device,
        calls,
        rounds,
        clock,
    )
    ms = {name: statistics.median(t) if t else float("nan") for name, t in times.items()}
    speedup = (
        paired_ratio(times["torch batched"], times["fastflow"])
        if times["torch batched"] and times["fastflow"]
        else float("nan")
    )
    return {
        "config": config,
        "matrices": sum(w.shape[0] for w in weights.values()),
        "max_n": max(weights),
        "torch_batched_ms": ms["torch batched"],
        "torch_loop_ms": ms["torch loop"],
        "fastflow_ms": ms["fastflow"],
        "speedup": speedup,
        "torch_error": max_logdet_error(weights, lambda w: torch.linalg.slogdet(w)[1]),
        "fastflow_error": max_logdet_error(weights, lambda w: batched_slogdet(w)[1]),
    }


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| config | matrices (max n) | torch batched ms | torch loop ms | fastflow ms | speedup vs batched "
        "| max abs err torch | max abs err fastflow |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['matrices']} ({r['max_n']}) | {r['torch_batched_ms']:.3f} "
            f"| {r['torch_loop_ms']:.3f} "
            f"| {r['fastflow_ms']:.3f} | {r['speedup']:.2f}x | {r['torch_error']:.1e} | {r['fastflow_error']:.1e} |"
        )
    return "\n".join(lines)


def main(quick: bool = False, device: str = "cpu", threads: int | None = None, clock: str = "wall") -> list[dict]:
    """Benchmark every config, print the table and return its rows (one dict per config)."""
    if threads is not None:
        torch.set_num_threads(threads)
    calls, rounds = (5, 5) if quick else (20, 15)
    rows = [bench_config(config, device, calls, rounds, clock) for config in CONFIGS]
    print(
        f"batched log-determinant, forward + backward, float32 weights, device={device}, "
        f"threads={torch.get_num_threads()}, {clock} clock, torch {torch.__version__}"
    )
    print(format_table(rows))
    return rows


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS), help="wall time or process CPU time")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse_args()
    main(quick=args.quick, device=args.device, threads=args.threads, clock=args.clock)
