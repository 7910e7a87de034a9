"""Helpers shared by the kernel launchers: output buffers, accumulation dtypes and tile sizes."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MIN_DOT = 16  # tl.dot needs every tile dimension >= 16
TARGET_PROGRAMS = 512  # enough reduction programs to fill a large GPU


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a launcher hands to a kernel comes from here (tests poison it with NaN, so call
    it as ``_common.new_output``)."""
    return torch.empty(shape, dtype=dtype, device=device)


def acc_dtype(*inputs: torch.Tensor | torch.dtype | None) -> torch.dtype:
    """The accumulation (and logdet / partial-sum) dtype of a launch: float64 when any input (a tensor
    or a dtype) is float64, else float32. ``None`` entries (absent optional tensors) are ignored."""
    kinds = {x.dtype if isinstance(x, torch.Tensor) else x for x in inputs}
    return torch.float64 if torch.float64 in kinds else torch.float32


def tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """The Triton dtype of a float32 or float64 accumulation dtype."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def pow2_tile(n: int, low: int, cap: int) -> int:
    """The power of two covering ``n``, clamped to ``[low, cap]``."""
    return max(low, min(cap, triton.next_power_of_2(n)))


def dot_tiles(dims: tuple[int, ...], caps: tuple[int, ...]) -> tuple[int, ...]:
    """Power-of-two ``tl.dot`` tiles covering ``dims``, each at least MIN_DOT and at most its cap."""
    return tuple(pow2_tile(n, MIN_DOT, cap) for n, cap in zip(dims, caps))


@triton.jit
def computed_operand(tile, mask, IN_REGISTERS: tl.constexpr):
    """A ``tl.dot`` operand ``tile`` (loaded with ``mask`` and ``other=0``), re-zeroed where masked by a
    select when ``IN_REGISTERS``. Triton hands Hopper's ``wgmma`` an operand that comes straight from a
    load through shared memory, copied there in the order ``wgmma`` reads it: K-major for TF32, so a
    tile whose contiguous dimension is not the reduction one (pixel-major activations, the weight read
    as ``W^T``) is copied 4 bytes at a time. A computed operand is loaded 16 bytes at a time in its own
    order, then laid out in registers (``wgmma``'s first operand) or stored to shared memory."""
    if IN_REGISTERS:
        tile = tl.where(mask, tile, 0.0)
    return tile


def conv_allows_tf32() -> bool:
    """Whether torch runs float32 convolutions on TF32 tensor cores: cuDNN's convolution setting
    (``torch.backends.cudnn.conv.fp32_precision``, "none" inheriting from ``torch.backends.cudnn``,
    then ``torch.backends``; ``torch.backends.cudnn.allow_tf32`` on a torch without that API). True
    by default: torch allows TF32 for convolutions unless told otherwise."""
    for level in ("cudnn.conv", "cudnn", ""):
        owner = torch.backends
        for part in filter(None, level.split(".")):
            owner = getattr(owner, part)
        value = getattr(owner, "fp32_precision", None)
        if value is None:
            return bool(torch.backends.cudnn.allow_tf32)
        if value != "none":
            return value == "tf32"
    return False


def conv_dot_precision(acc: torch.dtype) -> str:
    """``tl.dot`` input precision of a kernel that stands in for a convolution in a conditioning network
    (``conv1x1_bias_elu``): TF32 for float32 exactly when torch's convolutions use it
    (:func:`conv_allows_tf32`), IEEE otherwise."""
    return "tf32" if acc == torch.float32 and conv_allows_tf32() else "ieee"


def flow_dot_precision(acc: torch.dtype) -> str:
    """``tl.dot`` input precision of the flow's main path (``actnorm_conv1x1``), which must stay
    invertible to float32 accuracy: IEEE unless float32 matmuls are allowed TF32
    (``torch.set_float32_matmul_precision("high")``), an explicit opt-in."""
    if acc == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


FMA_REDUCTION_TILE = 16  # reduction tile of an IEEE float32 tl.dot (FFMA, its operands held in registers)


def reduction_cap(cap: int, operands: torch.dtype, precision: str) -> int:
    """The largest reduction-dimension tile of a ``tl.dot``: ``cap``, or FMA_REDUCTION_TILE for IEEE
    float32 operands, whose FFMA code holds a whole reduction slice per thread (larger tiles spill)."""
    return min(cap, FMA_REDUCTION_TILE) if operands == torch.float32 and precision == "ieee" else cap


def gemm_options(operands: torch.dtype) -> dict[str, int]:
    """``num_warps`` and ``num_stages`` of a ``tl.dot`` kernel whose operands have dtype ``operands``,
    chosen from the compiled code (``python -m benchmarks kernel_report``): float32 (TF32 or FFMA)
    tiles take 8 warps and 2 stages, so that the accumulators fit the registers without spills and
    the pipelined tiles leave room for 2 blocks (16 warps) per SM; 16-bit operands, half the bytes,
    keep 4 warps and 3 stages; float64 (tests only) Triton's defaults."""
    if operands in (torch.float16, torch.bfloat16):
        return {"num_warps": 4, "num_stages": 3}
    if operands == torch.float32:
        return {"num_warps": 8, "num_stages": 2}
    return {}


def reduction_chunks(
    items: int, programs_per_chunk: int, splits: int | None = None, max_splits: int | None = None
) -> tuple[int, int]:
    """``(chunks, items per chunk)`` for a reduction over ``items`` (sample, pixel block) items, each
    chunk run by ``programs_per_chunk`` programs: ``splits`` chunks when given (at most ``items``),
    else enough to fill a GPU but at most ``max_splits`` (the launcher's bound that keeps the partial
    sums no larger than the op's input); never an empty chunk."""
    if not splits:
        splits = max(1, min(items, TARGET_PROGRAMS // programs_per_chunk, max_splits or items))
    splits = min(items, splits)
    per_chunk = triton.cdiv(items, splits)
    return triton.cdiv(items, per_chunk), per_chunk
