"""Fused flow ops against their plain-PyTorch references: forward + backward time and bandwidth, the
one way to time an op.

    python -m benchmarks kernels            # CIFAR-10 and CelebA-HQ 256 shapes (CPU: CIFAR-10 only)
    python -m benchmarks kernels --quick    # a few small shapes (a smoke run)

Each op runs forward + backward with fixed output gradients, its ``"reference"`` implementation
against the fused one: ``"triton"`` on a CUDA machine, ``"cpu"`` (the C++ kernels and CPU
formulations) without one. On a CUDA machine both are timed with ``triton.testing.do_bench``, beside
a copy baseline: a device-to-device copy that reads and writes the same number of
bytes as the fused op must move (half of them read, half written). ``actnorm_conv1x1`` gets its
log|det W| passed in, as the models do (one batched call per step), so no call times a log-determinant
or waits for the host. Each row
gives the minimal bytes a fused forward + backward must move, the effective GB/s of both backends,
the speed-up over the reference and the fused bandwidth as a percentage of the copy bandwidth.
Without a GPU both are timed with ``time.perf_counter`` (median after a warm-up; the Triton
interpreter says nothing about speed) and the copy columns are None. No number here is ever estimated.

``main(quick) -> list[dict]`` returns the rows (``python -m benchmarks suite`` reports them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastflow.functional import actnorm_conv1x1, affine_coupling, cond_bias_elu, conv1x1_bias_elu, weight_norm


@dataclass(frozen=True)
class Case:
    """One benchmark: an op at one input shape ``[B, C, H, W]`` (C = Hd for cond_bias_elu; a weight
    ``[O, I, kh, kw]`` for weight_norm)."""

    op: str
    label: str
    shape: tuple[int, int, int, int]
    split: str = "continuous"


# Minimal elements moved by a fused forward + backward, in units of the input's numel N:
# actnorm_conv1x1: fwd x, y (2N); bwd dy, dx for dx = M^T dy and dy, x for G (4N).
# affine_coupling: fwd x, mu, u, y (3N); bwd dy, x_b, u, dx, dmu, du (4N).
# affine_coupling_actnorm (an ActNorm folded in): fwd 3N; bwd dy, x (all of it: the ActNorm's
#   gradient needs the conditioning channels too), mu, u, dx, dmu, du (5N).
# cond_bias_elu:   fwd h, out (2N); bwd out, dout, dh (3N).
# conv1x1_bias_elu (C_out = C_in): fwd h, out (2N); bwd out, dout, h, dh (4N).
# weight_norm: fwd v, w (2N); bwd v, dw, dv (3N).
TRAFFIC = {
    "actnorm_conv1x1": 6,
    "affine_coupling": 7,
    "affine_coupling_actnorm": 8,
    "cond_bias_elu": 5,
    "conv1x1_bias_elu": 6,
    "weight_norm": 5,
}

FULL_CASES = [
    Case("actnorm_conv1x1", "cifar10 L0", (64, 3, 32, 32)),
    Case("actnorm_conv1x1", "cifar10 L1", (64, 12, 16, 16)),
    Case("actnorm_conv1x1", "cifar10 top", (64, 48, 4, 4)),
    Case("actnorm_conv1x1", "celeba256 L0", (8, 3, 256, 256)),
    Case("actnorm_conv1x1", "celeba256 L1", (8, 12, 128, 128)),
    Case("actnorm_conv1x1", "celeba256 top", (8, 384, 4, 4)),
    Case("affine_coupling", "cifar10 L1 skip", (64, 12, 16, 16), "skip"),
    Case("affine_coupling", "cifar10 top", (64, 48, 4, 4)),
    Case("affine_coupling", "celeba256 L1 skip", (8, 12, 128, 128), "skip"),
    Case("affine_coupling", "celeba256 top", (8, 384, 4, 4)),
    Case("affine_coupling_actnorm", "cifar10 L1 skip", (64, 12, 16, 16), "skip"),
    Case("affine_coupling_actnorm", "celeba256 L1 skip", (8, 12, 128, 128), "skip"),
    Case("cond_bias_elu", "cifar10 L0 hidden", (64, 24, 32, 32)),
    Case("cond_bias_elu", "cifar10 L1 hidden", (64, 512, 16, 16)),
    Case("cond_bias_elu", "celeba256 L1 hidden", (8, 256, 128, 128)),
    Case("cond_bias_elu", "celeba256 top hidden", (8, 512, 4, 4)),
    Case("conv1x1_bias_elu", "cifar10 L1 hidden", (64, 512, 16, 16)),
    Case("conv1x1_bias_elu", "celeba256 L1 hidden", (8, 256, 128, 128)),
    Case("weight_norm", "celeba256 coupling out", (24, 256, 3, 3)),  # GPU only: the cpu backend runs the reference
]

QUICK_CASES = [
    Case("conv1x1_bias_elu", "small hidden", (4, 64, 16, 16)),
    Case("actnorm_conv1x1", "small", (4, 12, 16, 16)),
    Case("affine_coupling", "small skip", (4, 12, 16, 16), "skip"),
    Case("affine_coupling_actnorm", "small skip", (4, 12, 16, 16), "skip"),
    Case("cond_bias_elu", "small hidden", (4, 64, 16, 16)),
    Case("weight_norm", "small conv", (16, 64, 3, 3)),
]


def make_inputs(case: Case, device: str, dtype: torch.dtype) -> list[torch.Tensor | None]:
    """The op's tensor arguments (requiring grad), seeded."""
    gen = torch.Generator().manual_seed(0)
    batch, channels, height, width = case.shape

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        t = scale * torch.randn(*shape, generator=gen)
        return t.to(device, dtype).requires_grad_()

    if case.op == "actnorm_conv1x1":
        weight = torch.linalg.qr(torch.randn(channels, channels, generator=gen))[0]
        return [
            rand(batch, channels, height, width),
            rand(channels, scale=0.05),
            rand(channels, scale=0.05),
            weight.to(device, dtype).requires_grad_(),
        ]
    if case.op.startswith("affine_coupling"):
        half = (batch, channels // 2, height, width)
        inputs = [rand(*case.shape), rand(*half), rand(*half)]
        if case.op == "affine_coupling_actnorm":
            inputs += [rand(channels, scale=0.05), rand(channels, scale=0.05)]  # log_scale, bias
        return inputs
    if case.op == "conv1x1_bias_elu":
        weight = torch.randn(channels, channels, generator=gen) / channels**0.5
        return [rand(*case.shape), weight.to(device, dtype).requires_grad_(), rand(batch, channels)]
    if case.op == "weight_norm":
        return [rand(*case.shape, scale=0.05), rand(batch)]  # v [O, I, kh, kw], g [O]
    return [rand(*case.shape), rand(batch, channels)]


def make_forward(case: Case, inputs: list[torch.Tensor], backend: str) -> Callable[[], tuple[torch.Tensor, ...]]:
    """The op's forward on ``inputs`` with ``backend``; returns its outputs as a tuple."""
    if case.op == "actnorm_conv1x1":
        x, log_scale, bias, weight = inputs
        log_abs_det = torch.linalg.slogdet(weight.detach().double())[1].to(weight.dtype)  # given, as in the models
        return lambda: actnorm_conv1x1(x, log_scale, bias, weight, log_abs_det=log_abs_det, backend=backend)
    if case.op == "affine_coupling":
        return lambda: affine_coupling(*inputs, split=case.split, order="up", backend=backend)
    if case.op == "affine_coupling_actnorm":
        x, mu, u, log_scale, bias = inputs
        return lambda: affine_coupling(
            x, mu, u, split=case.split, order="up", backend=backend, actnorm=(log_scale, bias)
        )
    if case.op == "conv1x1_bias_elu":
        return lambda: (conv1x1_bias_elu(*inputs, backend=backend),)
    if case.op == "weight_norm":
        return lambda: (weight_norm(*inputs, backend=backend),)
    return lambda: (cond_bias_elu(*inputs, backend=backend),)


def make_step(case: Case, inputs: list[torch.Tensor], backend: str) -> Callable[[], None]:
    """One forward + backward of the op with fixed output gradients."""
    forward = make_forward(case, inputs, backend)
    grads = [torch.randn_like(t) for t in forward()]

    def step() -> None:
        outputs = [t for t in forward() if t.requires_grad]
        torch.autograd.backward(outputs, grads[: len(outputs)])

    return step


def time_ms_gpu(fn: Callable[[], None], inputs: list[torch.Tensor]) -> float:
    """Median milliseconds of ``fn`` on the GPU (``triton.testing.do_bench``)."""
    import triton.testing

    return triton.testing.do_bench(fn, grad_to_none=inputs, return_mode="median")


def time_ms_cpu(fn: Callable[[], None], inputs: list[torch.Tensor], repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` runs after one warm-up (``time.perf_counter``)."""
    fn()
    samples = []
    for _ in range(repeats):
        for t in inputs:
            t.grad = None
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return statistics.median(samples)


def gbps(num_bytes: int, ms: float | None) -> float | None:
    return None if ms is None else num_bytes / (ms * 1e6)


def bench_case(case: Case, device: str, dtype: torch.dtype, quick: bool) -> dict:
    """One row: the reference and the fused implementation, and the copy baseline on a GPU."""
    inputs = make_inputs(case, device, dtype)
    live = [t for t in inputs if t is not None]
    x = inputs[0]
    num_bytes = TRAFFIC[case.op] * x.numel() * x.element_size()
    if device == "cuda":
        ref_ms = time_ms_gpu(make_step(case, inputs, "reference"), live)
        fused_ms = time_ms_gpu(make_step(case, inputs, "triton"), live)
        source = torch.empty(num_bytes // 2 // 4, device=device).normal_()  # float32: num_bytes read + written
        target = torch.empty_like(source)
        copy_ms = time_ms_gpu(lambda: target.copy_(source), [])
    else:
        repeats = 3 if quick else 10
        ref_ms = time_ms_cpu(make_step(case, inputs, "reference"), live, repeats)
        fused_ms = time_ms_cpu(make_step(case, inputs, "cpu"), live, repeats)
        copy_ms = None
    copy_gbps = gbps(num_bytes, copy_ms)
    fused_gbps = gbps(num_bytes, fused_ms)
    return {
        "op": case.op,
        "case": case.label,
        "shape": list(case.shape),
        "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "bytes": num_bytes,
        "reference_ms": ref_ms,
        "reference_gbps": gbps(num_bytes, ref_ms),
        "fused_ms": fused_ms,
        "fused_gbps": fused_gbps,
        "speedup": None if fused_ms is None else ref_ms / fused_ms,
        "copy_gbps": copy_gbps,
        "fused_pct_of_copy": None if copy_gbps is None else 100 * fused_gbps / copy_gbps,
    }


def _fmt(value: float | None, width: int, decimals: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{decimals}f}"


COLUMNS = [  # (title, key, width, decimals)
    ("ref ms", "reference_ms", 9, 3),
    ("ref GB/s", "reference_gbps", 9, 2),
    ("fused ms", "fused_ms", 9, 3),
    ("fused GB/s", "fused_gbps", 10, 1),
    ("speedup", "speedup", 8, 2),
    ("copy GB/s", "copy_gbps", 10, 1),
    ("% copy", "fused_pct_of_copy", 7, 1),
]


def print_rows(rows: list[dict]) -> None:
    print(f"{'op':24} {'case':21} {'shape':15} {'MB':>7} " + " ".join(f"{t:>{w}}" for t, _, w, _ in COLUMNS))
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        cells = " ".join(_fmt(r[key], w, d) for _, key, w, d in COLUMNS)
        print(f"{r['op']:24} {r['case']:21} {shape:15} {r['bytes'] / 1e6:7.2f} {cells}")


def main(quick: bool = False) -> list[dict]:
    """Run every case (the small ones with ``quick``) and print and return the rows.

    ``bytes`` is the minimal traffic of a fused forward + backward (see TRAFFIC); both GB/s columns
    divide that same count by the measured time, so they compare as speed, not as traffic.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = QUICK_CASES if quick else [c for c in FULL_CASES if device == "cuda" or c.label.startswith("cifar10")]
    rows = [bench_case(case, device, torch.float32, quick) for case in cases]
    print(
        f"device: {rows[0]['device'] if rows else device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, float32, forward + backward, fused = "
        f"{'triton' if device == 'cuda' else 'cpu'} backend"
    )
    print_rows(rows)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few small shapes")
    main(parser.parse_args().quick)
