"""fastflow: Wolf, refined Glow and Glow with fused Triton kernels and a batched-logdet extension."""

import torch as _torch

from fastflow import _versions

__version__ = "0.1.0"

_versions.warn_if_untested_torch(_torch.__version__)
