"""The middle step of the coupling network: ELU(conv1x1 output + FC(z) per channel).

h ``[B, Hd, H, W]``, bias ``[B, Hd]`` (or None for no condition) -> ``[B, Hd, H, W]``.
"""
from __future__ import annotations

import torch

from fastflow.ops._backend import resolve_backend


def cond_bias_elu_reference(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is not None:
        h = h + bias.view(*bias.shape, *([1] * (h.dim() - 2)))
    return torch.nn.functional.elu(h)


def cond_bias_elu(h: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """``elu(h + bias[:, :, None, None])`` in one pass."""
    if bias is not None and tuple(bias.shape) != tuple(h.shape[:2]):
        raise ValueError(f"bias must have shape {tuple(h.shape[:2])} ([B, Hd]), got {tuple(bias.shape)}")
    if resolve_backend(backend, h, bias) == "triton" and h.dim() == 4:
        from fastflow.ops._cond_bias_elu_triton import cond_bias_elu_triton

        return cond_bias_elu_triton(h, bias)
    return cond_bias_elu_reference(h, bias)
