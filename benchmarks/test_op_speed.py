"""pytest-benchmark timings of each fused op against the plain PyTorch it replaces, forward + backward.

    make bench-ops      # = pytest benchmarks/test_op_speed.py --benchmark-enable (CPU: about a minute)

Groups are one op at one shape; within a group:

- ``unfused``: the op's plain-PyTorch reference (``*_reference`` in ``fastflow/ops/``: actnorm then
  ``conv2d``; slices and ``torch.cat`` for the coupling, then ActNorm's own ops for the folded one;
  ``elu(h + bias)``);
- ``cpu``: the op's ``backend="cpu"`` (actnorm folded into one ``baddbmm``, and so on);
- ``triton``: the fused kernels, on a CUDA device only;
- for the batched log-determinant: ``torch.linalg.slogdet`` on each size group, one call per layer,
  and ``fastflow.ops.batched_slogdet``.

Shapes are those of ``benchmarks/bench_kernels.py`` and ``benchmarks/bench_slogdet.py``. Under the
repository's default ``--benchmark-disable`` (pytest.ini) each case runs once, as a smoke test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from benchmarks import bench_kernels, bench_slogdet
from fastflow.ops.actnorm import actnorm
from fastflow.ops.actnorm_conv1x1 import actnorm_conv1x1_reference
from fastflow.ops.affine_coupling import affine_coupling_reference
from fastflow.ops.cond_bias_elu import cond_bias_elu_reference
from fastflow.ops.conv1x1_bias_elu import conv1x1_bias_elu_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [c for c in bench_kernels.FULL_CASES if DEVICE == "cuda" or c.label.startswith("cifar10")]
BACKENDS = ["unfused", "cpu"] + (["triton"] if DEVICE == "cuda" else [])


def unfused_step(case: bench_kernels.Case, inputs: list[torch.Tensor]) -> Callable[[], None]:
    """Forward + backward of the op's plain-PyTorch reference, with fixed output gradients."""

    def forward() -> list[torch.Tensor]:
        if case.op == "actnorm_conv1x1":
            return [actnorm_conv1x1_reference(*inputs)]
        if case.op == "affine_coupling":
            return list(affine_coupling_reference(*inputs, case.split, "up", 1.0))
        if case.op == "affine_coupling_actnorm":
            y, logdet = affine_coupling_reference(*inputs[:3], case.split, "up", 1.0)
            y, actnorm_logdet = actnorm(y, *inputs[3:])
            return [y, logdet + actnorm_logdet]
        if case.op == "conv1x1_bias_elu":
            return [conv1x1_bias_elu_reference(*inputs)]
        return [cond_bias_elu_reference(*inputs)]

    grads = [torch.randn_like(t) for t in forward()]

    def step() -> None:
        torch.autograd.backward(forward(), grads)

    return step


def synchronised(step: Callable[[], None]) -> Callable[[], None]:
    if DEVICE != "cuda":
        return step

    def run() -> None:
        step()
        torch.cuda.synchronize()

    return run


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op}-{c.label.replace(' ', '_')}")
def test_fused_op(benchmark, case: bench_kernels.Case, backend: str) -> None:
    inputs = bench_kernels.make_inputs(case, DEVICE, torch.float32)
    step = unfused_step(case, inputs) if backend == "unfused" else bench_kernels.make_step(case, inputs, backend)
    benchmark.group = f"{case.op} {case.label} {'x'.join(map(str, case.shape))}"
    benchmark(synchronised(step))
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in inputs if t is not None)


SLOGDET_METHODS = {
    "torch batched": lambda groups, layers: bench_slogdet._torch_batched(groups),
    "torch per layer": lambda groups, layers: bench_slogdet._torch_loop(layers),
    "fastflow": lambda groups, layers: bench_slogdet._fastflow(groups),
}


@pytest.mark.parametrize("method", sorted(SLOGDET_METHODS))
@pytest.mark.parametrize("config", sorted(bench_slogdet.CONFIGS))
def test_batched_slogdet(benchmark, config: str, method: str) -> None:
    weights = bench_slogdet.make_weights(bench_slogdet.matrix_counts(config), DEVICE)
    groups = [w.clone().requires_grad_() for w in weights.values()]
    layers = [m.clone().requires_grad_() for w in weights.values() for m in w]
    total = SLOGDET_METHODS[method]

    def step() -> None:
        total(groups, layers).backward()

    benchmark.group = f"batched slogdet {config}"
    benchmark(synchronised(step))
    grads = [g.grad for g in groups] if method != "torch per layer" else [m.grad for m in layers]
    assert all(g is not None for g in grads)
