"""Test setup: on a machine without a GPU the Triton kernels run in the interpreter.

TRITON_INTERPRET must be set before any Triton kernel module is imported, so it is set here, before
the test modules are collected.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One thread: the suite runs on 2 shared cores, where 2 threads make small ops far slower.
torch.set_num_threads(1)
