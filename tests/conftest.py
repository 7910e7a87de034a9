"""Test setup: on a machine without a GPU the Triton kernels run in the interpreter.

TRITON_INTERPRET must be set before any Triton kernel module is imported, so it is set here, before
the test modules are collected.
"""

import os
import socket
import sys
from pathlib import Path

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


# The Python-level host syncs (each makes the host wait for the device) and fastflow's own source
# folders: `forbid_syncs` makes those syncs raise when called from that code.
SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
OWN_CODE = tuple(str(Path(__file__).resolve().parents[1] / folder) for folder in ("fastflow", "kernels"))


@pytest.fixture
def forbid_syncs(monkeypatch):
    """Make every sync listed in SYNCS raise when fastflow's own code calls it; returns the installer."""

    def guard(name):
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(OWN_CODE):
                raise AssertionError(f"host sync: Tensor.{name} called from {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)

        return guarded

    def install():
        for name in SYNCS:
            monkeypatch.setattr(torch.Tensor, name, guard(name))

    return install


def gloo_rank_envs(base: dict[str, str], world_size: int = 2) -> list[dict[str, str]]:
    """The environment of each rank of a ``world_size``-process gloo job on this machine: ``base``
    plus the rendezvous variables, on a port free when this is called."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shared = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size)}
    return [{**base, **shared, "RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in range(world_size)]
