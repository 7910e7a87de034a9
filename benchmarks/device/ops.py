"""Device-check stages for the ops (run by ``python -m benchmarks.device.gpu_check``; see there).

    python -m benchmarks.device.ops ops     --out ops.csv     [--dry-run]
    python -m benchmarks.device.ops slogdet --out slogdet.csv [--dry-run]

``ops``: every case of ``benchmarks.bench_kernels`` (one list of ops and shapes: a new fused op joins
by adding its case there), forward and forward + backward, for every backend of
``fastflow.ops.backends.BACKENDS`` except "auto" (so a new backend joins by being listed there) and, at
the first shape of each op, for ``torch.compile`` of the reference. Each is timed eagerly
(``triton.testing.do_bench``, median) and replayed from a CUDA graph (``do_bench_cudagraph``, median:
device time without launch gaps); ``bytes`` is the least traffic of the fused op
(``bench_kernels.TRAFFIC``), ``gbps`` = bytes / the better of the two times, ``pct_copy`` = that over
a device-to-device copy of the same bytes timed beside it.
``err`` = max |out - float64 reference out| / max |ref| of the forward outputs.

``slogdet``: ``fastflow.ops.batched_slogdet`` (forward + backward) against ``torch.linalg.slogdet`` in
float32 and float64, at the (n, batch) of the 1x1 convolutions of each model config.

``--dry-run``: the CPU, the Triton interpreter, the quick cases and tiny configs, ``time.perf_counter``
and the ``aot_eager`` compiler: the plumbing, not the speed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable

import torch

from benchmarks import bench_kernels
from benchmarks._common import write_csv

# Least elements a fused forward moves, in units of the input's numel (bench_kernels.TRAFFIC: fwd + bwd).
FORWARD_TRAFFIC = {
    "actnorm_conv1x1": 2,
    "affine_coupling": 3,
    "affine_coupling_actnorm": 3,
    "cond_bias_elu": 2,
    "conv1x1_bias_elu": 2,
    "weight_norm": 2,
}
STEP_CONFIGS = ("cifar10_wolf", "cifar10_glow", "imagenet64_wolf", "celeba256_wolf")
DRY_CONFIGS = ("tiny_wolf", "tiny_glow")
DRY_CASES = [dataclasses.replace(c, shape=(1, 8, 4, 4)) for c in bench_kernels.QUICK_CASES]  # the interpreter is slow


def op_backends() -> list[str]:
    """The backends to time: every one that ``backend=`` accepts, except "auto"."""
    from fastflow.ops.backends import BACKENDS

    return [b for b in BACKENDS if b != "auto"]


def timer(device: str) -> Callable[[Callable[[], object], bool], float | None]:
    """``time(fn, graph) -> median ms``: do_bench / do_bench_cudagraph on a GPU, perf_counter on the CPU."""
    if device == "cpu":

        def cpu_time(fn, graph):
            if graph:
                return None
            fn()
            samples = []
            for _ in range(2):
                start = time.perf_counter()
                fn()
                samples.append(1e3 * (time.perf_counter() - start))
            return statistics.median(samples)

        return cpu_time
    import triton.testing

    def gpu_time(fn, graph):
        try:
            if graph:
                with torch.cuda.stream(torch.cuda.Stream()):
                    return triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median")
            return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
        except Exception as exc:  # a capture that fails is a finding, not a crash
            print(f"    {'graph' if graph else 'eager'} timing failed: {type(exc).__name__}: {str(exc)[:160]}")
            return None

    return gpu_time


def _outputs(result) -> list[torch.Tensor]:
    return [t for t in (result if isinstance(result, tuple) else (result,)) if isinstance(t, torch.Tensor)]


def _error(forward: Callable, reference: Callable) -> float:
    with torch.no_grad():
        got, want = _outputs(forward()), _outputs(reference())
    err = 0.0
    for a, r in zip(got, want):
        scale = r.abs().max().clamp_min(1e-30)
        err = max(err, float(((a.double() - r.double()).abs().max() / scale).cpu()))
    return err


def run_ops(dry_run: bool, out: str) -> list[dict]:
    device = "cpu" if dry_run else "cuda"
    time_ms = timer(device)
    compile_backend = "aot_eager" if dry_run else "inductor"
    rows, compiled_ops = [], set()
    for case in DRY_CASES if dry_run else bench_kernels.FULL_CASES:
        inputs = bench_kernels.make_inputs(case, device, torch.float32)
        live = [t for t in inputs if t is not None]
        reference64 = bench_kernels.make_forward(case, [t.detach().double() for t in inputs], "reference")
        variants = {b: bench_kernels.make_forward(case, inputs, b) for b in op_backends()}
        if case.op not in compiled_ops:  # compiling takes seconds: the first shape of each op only
            compiled_ops.add(case.op)
            reference = bench_kernels.make_forward(case, inputs, "reference")
            variants["compiled"] = torch.compile(reference, backend=compile_backend)
        numel, size = inputs[0].numel(), inputs[0].element_size()
        for mode in ("fwd", "fwd+bwd"):
            traffic = FORWARD_TRAFFIC[case.op] if mode == "fwd" else bench_kernels.TRAFFIC[case.op]
            num_bytes = traffic * numel * size
            source = torch.randn(max(1, num_bytes // 8), device=device)  # copy: num_bytes read + written
            target = torch.empty_like(source)
            copy_ms = time_ms(lambda target=target, source=source: target.copy_(source), False)
            for variant, forward in variants.items():
                row = {"op": case.op, "case": case.label, "shape": "x".join(map(str, case.shape)), "mode": mode}
                row["variant"] = variant
                try:
                    if mode == "fwd":
                        step = lambda forward=forward: torch.no_grad()(forward)()  # noqa: E731
                    else:
                        grads = [torch.randn_like(t) for t in _outputs(forward()) if t.requires_grad]
                        step = lambda forward=forward, grads=grads: torch.autograd.backward(  # noqa: E731
                            [t for t in _outputs(forward()) if t.requires_grad], grads
                        )
                    eager, graph = time_ms(step, False), time_ms(step, True)
                    for t in live:
                        t.grad = None
                    best = min(t for t in (eager, graph) if t is not None) if (eager or graph) else None
                    gbps = num_bytes / (best * 1e6) if best else None
                    copy_gbps = num_bytes / (copy_ms * 1e6) if copy_ms else None
                    row |= {"eager_us": eager and 1e3 * eager, "graph_us": graph and 1e3 * graph, "bytes": num_bytes}
                    row |= {
                        "gbps": gbps,
                        "copy_gbps": copy_gbps,
                        "pct_copy": gbps and copy_gbps and 100 * gbps / copy_gbps,
                    }
                    row["err"] = _error(forward, reference64) if mode == "fwd" else None
                except Exception as exc:  # one failing variant is a row, not the end of the stage
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                rows.append(row)
                print(
                    "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                    flush=True,
                )
        write_csv(out, rows)  # after every case: a stage stopped at its time cap keeps what it measured
    return rows


def config_sizes(name: str, device: str) -> list[tuple[int, int]]:
    """(n, count) of the 1x1 convolution weights of model config ``name`` (one batched call each)."""
    from fastflow.flows.conv1x1 import InvertibleMatrix
    from fastflow.models import build_model

    with torch.device(device):
        model = build_model(name)
    counts = collections.Counter(m.weight.shape[0] for m in model.modules() if isinstance(m, InvertibleMatrix))
    return sorted(counts.items())


def run_slogdet(dry_run: bool, out: str) -> list[dict]:
    from fastflow.functional import batched_slogdet

    device = "cpu" if dry_run else "cuda"
    time_ms = timer(device)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for config in DRY_CONFIGS if dry_run else STEP_CONFIGS:
        for n, batch in config_sizes(config, device):
            q = torch.linalg.qr(torch.randn(batch, n, n, generator=generator, dtype=torch.float64))[0]
            w64 = q + 0.3 / n**0.5 * torch.randn(batch, n, n, generator=generator, dtype=torch.float64)
            truth = torch.linalg.slogdet(w64)[1]
            row = {"config": config, "n": n, "batch": batch}
            for name, fn, dtype in (
                ("fastflow", lambda w: batched_slogdet(w)[1], torch.float32),
                ("torch_f32", lambda w: torch.linalg.slogdet(w)[1], torch.float32),
                ("torch_f64", lambda w: torch.linalg.slogdet(w)[1], torch.float64),
            ):
                w = w64.to(device, dtype).requires_grad_()
                row[f"{name}_ms"] = time_ms(lambda fn=fn, w=w: fn(w).sum().backward(), False)
                with torch.no_grad():
                    row[f"{name}_err"] = float((fn(w.detach()).double().cpu() - truth).abs().max())
            rows.append(row)
            print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
            write_csv(out, rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device.ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["ops", "slogdet"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    rows = run_ops(args.dry_run, args.out) if args.what == "ops" else run_slogdet(args.dry_run, args.out)
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0 if rows and not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
