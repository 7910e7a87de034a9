"""Batched log-determinants and inverses of square matrices.

Placeholder until the csrc extension lands: torch.linalg, in float64 for float32 input.
W ``[B, n, n]`` -> sign ``[B]``, log|det W| ``[B]``; inverse ``[B, n, n]``.
"""
from __future__ import annotations

import torch


def batched_slogdet(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sign, logabsdet = torch.linalg.slogdet(weight.double())
    return sign.to(weight.dtype), logabsdet.to(weight.dtype)


def batched_inverse(weight: torch.Tensor) -> torch.Tensor:
    return torch.linalg.inv(weight.double()).to(weight.dtype)
