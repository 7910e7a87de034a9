"""fastflow: Wolf, refined Glow and Glow with fused Triton kernels and a C++/CUDA extension (batched
log-determinants and inverses, and the CPU kernels of the ``"cpu"`` backend)."""

import torch as _torch

from fastflow import _versions

__version__ = "0.1.0"

_versions.warn_if_untested_torch(_torch.__version__)
