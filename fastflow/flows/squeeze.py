"""Squeeze: ``[B, C, H, W] -> [B, 4C, H/2, W/2]``, a pure permutation (logdet 0).

Output channel ``(i * 2 + j) * C + c`` holds input pixel ``(2h + i, 2w + j)`` of channel ``c``: the
four sub-pixel copies form four contiguous blocks of C channels (the layout continuous splits rely on).
"""

from __future__ import annotations

import torch


def squeeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs an even height and width, got shape {tuple(x.shape)}")
    x = x.view(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 3, 5, 1, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c4, h, w = x.shape
    if c4 % 4:
        raise ValueError(f"unsqueeze needs a channel count divisible by 4, got shape {tuple(x.shape)}")
    c = c4 // 4
    x = x.view(b, 2, 2, c, h, w)
    return x.permute(0, 3, 4, 1, 5, 2).reshape(b, c, 2 * h, 2 * w)
