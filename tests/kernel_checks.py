"""Checks shared by the fused-op tests (test_actnorm_conv1x1, test_affine_coupling, test_cond_bias_elu).

- :func:`compile_for_gpus`: compile Triton kernels to sm_80 (A100) and sm_90 (H100/H200) cubins
  without a GPU (in a subprocess without ``TRITON_INTERPRET``), which catches what the interpreter
  lets pass (every int a plain i32, no runtime specialisation: whether they compile, not what code
  they compile to; tests/test_kernel_machine_code.py judges the code the runtime would run);
  ``FASTFLOW_TRITON_PATH`` (a folder holding another ``triton`` package, put first on the
  subprocess's ``PYTHONPATH``) compiles them with that Triton instead (tests/test_triton_versions.py);
- :func:`poison_outputs`: make every buffer a kernel module's launchers allocate start as NaN, so an
  element a kernel forgets to write cannot pass as a correct zero;
- :func:`random_layout`: a float64 normal tensor in one of the memory layouts the ops must accept;
- :func:`autograd_node_names`: the class names of every node in a tensor's autograd graph.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import ModuleType

import pytest
import torch

GPU_ARCHS = (80, 90)  # compute capabilities the kernels must compile for
COMPILE_SCRIPT = """
import sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import {module} as kernels
print("triton", triton.__version__, triton.__file__)
for name, types, constexprs in eval(sys.argv[1]):
    fn = getattr(kernels, name)
    constexprs = {{k: getattr(tl, v[3:]) if str(v).startswith("tl.") else v for k, v in constexprs.items()}}
    signature = {{a: "constexpr" if a in constexprs else types.get(a, "i32") for a in fn.arg_names}}
    for arch in {archs}:
        triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32))
"""


def compile_for_gpus(module: str, variants: list, archs: tuple[int, ...] = GPU_ARCHS) -> None:
    """Compile ``(kernel name, argument types, constexprs)`` variants of ``module`` for each of ``archs``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if env.get("FASTFLOW_TRITON_PATH"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env["FASTFLOW_TRITON_PATH"], env.get("PYTHONPATH")]))
    script = COMPILE_SCRIPT.format(module=module, archs=tuple(archs))
    done = subprocess.run([sys.executable, "-c", script, repr(variants)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout.splitlines()[0])  # which Triton compiled them (read by test_triton_versions.py)


def poison_outputs(monkeypatch: pytest.MonkeyPatch, kernels: ModuleType) -> None:
    """Every buffer that the launchers of ``kernels`` allocate (all through ``kernels._common.new_output``)
    starts as NaN."""

    def nan_buffer(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(kernels._common, "new_output", nan_buffer)


def random_layout(shape: tuple[int, ...], layout: str, generator: torch.Generator) -> torch.Tensor:
    """float64 N(0, 1) of ``shape``: ``"contiguous"``, ``"strided"`` (channels-last, 4-D shapes) or
    ``"sliced"`` (every other element of a twice-as-wide last dimension)."""
    if layout == "sliced":
        return torch.randn(*shape[:-1], 2 * shape[-1], generator=generator, dtype=torch.float64)[..., ::2]
    t = torch.randn(shape, generator=generator, dtype=torch.float64)
    return t.contiguous(memory_format=torch.channels_last) if layout == "strided" else t


def autograd_node_names(out: torch.Tensor) -> set[str]:
    """The class names of every node in ``out``'s autograd graph."""
    visited, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in visited:
            visited.add(node)
            stack += [next_node for next_node, _ in node.next_functions]
    return {type(node).__name__ for node in visited}
