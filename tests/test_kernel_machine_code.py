"""The machine code of every Triton kernel a Wolf training step launches, judged without a GPU at
benchmark shapes (``make test-kernels``): no spills, tensor cores in the GEMMs (TF32 exactly when
torch's convolutions use it), 128-bit accesses in the elementwise and coupling kernels, >= 8 warps
per SM; and at most half the reference backend's kernel launches per CIFAR-10 Wolf step. The checks
(``benchmarks/kernel_report/checks.py``) run in a subprocess without ``TRITON_INTERPRET``, which
compiles for sm_80 and sm_90 with Triton's runtime specialisation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from fastflow.kernels import _common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def failures() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernel_report.checks"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["compiles"] > 100  # every kernel of both steps was compiled
    return result


@pytest.mark.parametrize(
    "check",
    ["spills", "tensor_cores", "wide_accesses_bias_elu", "wide_accesses_coupling", "wide_operand_copies", "occupancy"],
)
def test_machine_code(failures, check):
    assert not failures[check], "\n".join(failures[check])


LAUNCH_SCRIPT = """
import json
from benchmarks.kernel_report.launch_count import count_all
print(json.dumps(count_all("cifar10_wolf", 64)))
"""


def test_triton_step_launches_at_most_half_the_reference():
    """A CIFAR-10 Wolf training step (batch 64, forward + backward, fp32+tf32 and bf16, counted on fake
    tensors by benchmarks/kernel_report/launch_count.py) launches at most half the kernels with the
    Triton backend that it does with the reference. Without ``TRITON_INTERPRET``: the count records
    the launches Triton's runtime would make, which the interpreter does not go through."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", LAUNCH_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout)  # precision -> backend -> [ATen, Triton] launches
    assert set(counts) == {"fp32+tf32", "bf16"}
    for by_backend in counts.values():
        (ref_aten, ref_triton), (aten, triton_launches) = by_backend["reference"], by_backend["triton"]
        assert ref_triton == 0 and ref_aten > 5000 and aten > 0 and triton_launches > 500, counts  # both counted
        assert aten + triton_launches <= 0.5 * ref_aten, counts


@pytest.mark.parametrize(("setting", "expected"), [("tf32", "tf32"), ("ieee", "ieee")])
def test_conv_gemm_follows_torch_conv_precision(setting, expected):
    saved = torch.backends.cudnn.conv.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = setting
    try:
        assert _common.conv_dot_precision(torch.float32) == expected
        assert _common.conv_dot_precision(torch.float64) == "ieee"
    finally:
        torch.backends.cudnn.conv.fp32_precision = saved
