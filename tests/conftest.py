"""Test setup: on a machine without a GPU the Triton kernels run in the interpreter.

TRITON_INTERPRET must be set before any Triton kernel module is imported, so it is set here, before
the test modules are collected.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401
except ImportError:  # the Triton tests skip themselves
    pass
else:
    from fastflow.ops.backends import check_interpreter, interpreter_on

    if interpreter_on():
        try:
            check_interpreter()  # a Triton/numpy pair the interpreter cannot run: one line, no 60 failures
        except RuntimeError as exc:
            pytest.exit(str(exc), returncode=2)

# One thread by default: the suite runs on 2 shared cores, where 2 threads make small ops far slower.
# FASTFLOW_TEST_THREADS=2 (`make test-portable`) runs it on two, as a user's machine may.
torch.set_num_threads(int(os.environ.get("FASTFLOW_TEST_THREADS", "1")))


@pytest.fixture
def poisoned_empty():
    """torch fills every new uninitialised tensor (the C++ kernels' outputs too) with NaN, so an element
    a kernel fails to write shows up as a mismatch."""
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.use_deterministic_algorithms(False)
