"""Kernel launches of one training step's forward and backward per backend, counted without a GPU.

The step runs on fake tensors under a ``TorchDispatchMode`` that counts every ATen op a CUDA run
would launch a kernel for (views, allocations and other metadata-only ops launch none); for the
``triton`` backend the Triton launches are counted through the launchers (:func:`capture.recording`),
whose output buffers are allocated unfilled, as on a GPU. A cuDNN convolution or a cuBLAS GEMM counts
as one launch (it may be more on a GPU).
"""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.kernel_report.capture import PRECISIONS, Precision, forward_backward, recording, step_inputs

# ATen ops that launch no kernel: views, allocations without a fill, metadata.
NO_KERNEL = {
    "view", "_unsafe_view", "as_strided", "permute", "t", "transpose", "expand", "unsqueeze", "squeeze", "slice",
    "select", "alias", "detach", "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided",
    "reshape", "unbind", "split", "split_with_sizes", "chunk", "narrow", "lift_fresh", "_to_copy_noop",
    "unfold", "diagonal", "view_as", "_reshape_alias", "is_same_size", "_local_scalar_dense", "set_",
    "resize_", "squeeze_", "unsqueeze_", "as_strided_", "promote_types", "result_type", "sym_size", "sym_stride",
    "sym_numel", "sym_storage_offset", "is_contiguous", "_has_compatible_shallow_copy_type", "item",
}  # fmt: skip


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.namespace != "prim" and name not in NO_KERNEL:
            self.ops[f"{func.namespace}::{name}"] += 1
        return func(*args, **(kwargs or {}))


def count_step(config: str, batch: int, backend: str, p: Precision = PRECISIONS[1]) -> tuple[int, int, Counter]:
    """``(ATen kernel launches, Triton launches, ATen ops by name)`` of one forward + backward of the
    bundled model ``config`` at ``batch`` with ``backend``, on fake tensors."""
    counter = _OpCounter()
    with step_inputs(config, batch, backend) as (model, x), recording() as launches, counter:
        forward_backward(model, x, p)
    return sum(counter.ops.values()), len(launches), counter.ops


Counts = dict[str, dict[str, tuple[int, int]]]  # precision -> backend -> (ATen, Triton) launches


def count_all(config: str = "cifar10_wolf", batch: int = 64, backends=("reference", "triton")) -> Counts:
    """The launches of :func:`count_step` per precision (fp32+tf32 and bf16) and backend."""
    return {
        p.name: {backend: count_step(config, batch, backend, p)[:2] for backend in backends}
        for p in (PRECISIONS[1], PRECISIONS[2])
    }


def ratios(counts: Counts) -> dict[str, float]:
    """Per precision, the launches of the last backend over the first's (``triton`` over ``reference``)."""
    return {p: sum(list(by.values())[-1]) / sum(next(iter(by.values()))) for p, by in counts.items()}


def table(counts: Counts) -> list[str]:
    lines = [
        "| backend | precision | ATen kernels | Triton kernels | launches | vs reference |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for p, by_backend in counts.items():
        base = sum(next(iter(by_backend.values())))
        for backend, (aten, triton_launches) in by_backend.items():
            total = aten + triton_launches
            lines.append(f"| {backend} | {p} | {aten} | {triton_launches} | {total} | {total / base:.2f} |")
    return lines
