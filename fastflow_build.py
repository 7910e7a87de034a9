"""Build settings of the ``fastflow._C`` extension, shared by setup.py and the JIT loader.

Placeholder until the csrc issue lands: CPU sources only.
"""
from __future__ import annotations

import glob
import os


def extension_kwargs(root: str) -> dict:
    """Sources and flags for ``fastflow._C``; ``with_cuda`` says whether CUDA sources are included."""
    sources = sorted(glob.glob(os.path.join(root, "csrc", "*.cpp")))
    return {"with_cuda": False, "ext": {"sources": [os.path.relpath(s, root) for s in sources]}}
