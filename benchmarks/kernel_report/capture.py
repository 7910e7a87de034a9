"""Kernel launches recorded from the real launchers instead of run: each launch is specialised the way
Triton's runtime specialises it (its own binder and ``_pack_args``: 16-byte aligned pointers, ints
divisible by 16, ints equal to 1), so the compiled kernel is the one a GPU would run.

:func:`recording` replaces ``JITFunction.run`` while it is open; the launchers run unmodified on the
CPU tensors they get (fake ones, in every use here: nothing is computed, and the buffers they
allocate are left unfilled, as on a GPU). :func:`capture_step` runs one Wolf training step's forward
and backward through the Triton backend at a benchmark shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.runtime.jit import JITFunction, create_function_from_signature

from fastflow.ops import backends

# The specialisation of a launch is the same for every NVIDIA target (alignment and divisibility by 16).
_SPECIALISING_BACKEND = CUDABackend(GPUTarget("cuda", 80, 32))
# JITFunction -> the binder Triton's runtime would build for it.
_binders: dict[JITFunction, object] = {}


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as Triton's runtime would compile and run it."""

    fn: JITFunction = dataclasses.field(compare=False, hash=False)
    kernel: str  # module.function
    signature: tuple[tuple[str, str], ...]  # argument name -> Triton type ("*fp32", "i32", "constexpr")
    constexprs: tuple[tuple[str, object], ...]  # by argument name
    attrs: tuple[tuple[str, tuple], ...]  # by argument name: (("tt.divisibility", 16),) and the like
    options: tuple[tuple[str, object], ...]  # launch options the launcher passed (num_warps, num_stages)
    grid: tuple[int, int, int]
    bytes_moved: int  # every tensor argument's elements once (inputs read, outputs written)
    flops: int  # 2 M N K of its tl.dot work (0 for kernels without one)

    @property
    def programs(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def compile_key(self) -> tuple:
        """What the compiled code depends on (launches sharing it share one binary)."""
        return (self.kernel, self.signature, tuple((k, repr(v)) for k, v in self.constexprs), self.attrs, self.options)


def _flops(bound: dict) -> int:
    """``2 C_IN C_OUT B P`` for the GEMM kernels (first tensor argument ``[B, C, P]``), else 0."""
    if "C_IN" not in bound or "C_OUT" not in bound:
        return 0
    first = next(v for v in bound.values() if isinstance(v, torch.Tensor))
    return 2 * int(bound["C_IN"]) * int(bound["C_OUT"]) * (first.numel() // first.shape[1])


def _bytes_moved(bound: dict) -> int:
    """Each distinct tensor argument's elements once (a placeholder passed twice counts once)."""
    seen: dict[tuple[int, int], int] = {}
    for v in bound.values():
        if isinstance(v, torch.Tensor) and v.numel():
            seen[(v.data_ptr(), v.numel())] = v.numel() * v.element_size()
    return sum(seen.values())


def _key_items(paths: dict) -> tuple:
    """``{(index,): value}`` as ``((argument name, value), ...)``."""
    return tuple(sorted(paths.items()))


def specialise(fn: JITFunction, args: tuple, kwargs: dict, grid) -> Launch:
    """The launch ``fn[grid](*args, **kwargs)`` as Triton's runtime would specialise it."""
    binder = _binders.get(fn)
    if binder is None:
        binder = _binders[fn] = create_function_from_signature(fn.signature, fn.params, _SPECIALISING_BACKEND)
    bound, specialization, _ = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(_SPECIALISING_BACKEND, kwargs, bound, specialization, {})
    names = list(bound)
    grid = grid(bound) if callable(grid) else grid
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    launch_options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in bound))
    return Launch(
        fn=fn,
        kernel=f"{fn.fn.__module__.rsplit('.', 1)[-1]}.{fn.fn.__name__}",
        signature=tuple(signature.items()),
        constexprs=tuple((names[path[0]], value) for path, value in sorted(constexprs.items())),
        attrs=tuple((names[path[0]], tuple(map(tuple, value))) for path, value in sorted(attrs.items()) if value),
        options=launch_options,
        grid=grid,
        bytes_moved=_bytes_moved(bound),
        flops=_flops(bound),
    )


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Inside: Triton launches are recorded (as :class:`Launch`) into the yielded list instead of run,
    and the ``"triton"`` backend accepts CPU tensors."""
    launches: list[Launch] = []

    def run(self, *args, grid, warmup, **kwargs):
        launches.append(specialise(self, args, kwargs, grid))

    saved = (JITFunction.run, backends.interpreter_on)
    JITFunction.run = run
    backends.interpreter_on = lambda: True
    try:
        yield launches
    finally:
        JITFunction.run, backends.interpreter_on = saved


@dataclasses.dataclass(frozen=True)
class Precision:
    """How float32 is run: ``name`` in the report, bfloat16 autocast or not, TF32 allowed or not."""

    name: str
    bf16: bool
    tf32: bool


PRECISIONS = (Precision("fp32", False, False), Precision("fp32+tf32", False, True), Precision("bf16", True, True))


@contextlib.contextmanager
def precision(p: Precision) -> Iterator[None]:
    """torch's TF32 settings for ``p`` (matmul and cuDNN convolutions alike), restored afterwards."""
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.set_float32_matmul_precision("high" if p.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = p.tf32
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]
        torch.backends.cuda.matmul.allow_tf32 = saved[2]


def forward_backward(model: torch.nn.Module, x: torch.Tensor, p: Precision) -> None:
    """One training step's forward (under bfloat16 autocast for ``p.bf16``; CPU autocast stands in
    for CUDA's) and backward, outside autocast as on a GPU: there the backward runs on the autograd
    engine's device thread, which autocast does not reach, while a CPU backward would run (and cast)
    under the caller's autocast."""
    with precision(p):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p.bf16):
            loss = model.loss(x)["loss"]
        loss.backward()


def capture_step(config: str, batch: int, p: Precision, shallow: bool = False) -> list[Launch]:
    """The Triton launches of one training step's forward and backward (the loss of a random uint8
    batch) of the bundled model ``config`` at ``batch``, run on fake CPU tensors (every shape, dtype
    and pointer offset, nothing computed; :func:`forward_backward`). ``shallow``: two flow
    step per level (the same layer shapes, so the same distinct launches, in a fraction of the time)."""
    with step_inputs(config, batch, shallow=shallow) as (model, x), recording() as launches:
        forward_backward(model, x, p)
    return launches


@contextlib.contextmanager
def step_inputs(
    config: str, batch: int, backend: str = "triton", shallow: bool = False
) -> Iterator[tuple[torch.nn.Module, torch.Tensor]]:
    """Inside: ``(model, images)`` of the bundled model ``config`` (parameters and images fake tensors);
    ``shallow``: every level's (and the prior's) flow steps cut to two (the split patterns alternate)."""
    from fastflow.config import bundled_config_path, load_json
    from fastflow.models import build_model

    data = load_json(bundled_config_path(config))["model"]
    if shallow:
        steps = data["flow"]["num_steps"]
        data["flow"]["num_steps"] = [[min(k, 2) for k in n] if isinstance(n, list) else min(n, 2) for n in steps]
        if "prior" in data:
            data["prior"]["num_steps"] = min(data["prior"]["num_steps"], 2)
    torch.manual_seed(0)
    model = build_model(data).set_backend(backend)
    size = model.config.image_size
    with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        for module in model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                setattr(module, name, torch.nn.Parameter(mode.from_tensor(param)))
            for name, buf in list(module.named_buffers(recurse=False)):
                setattr(module, name, mode.from_tensor(buf))
        x = torch.randint(0, 256, (batch, model.config.in_channels, size, size), dtype=torch.uint8)
        yield model, x
