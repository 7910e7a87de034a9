"""Image grids of samples, switches, interpolations and reconstructions (PNG via torchvision).

All functions take uint8 images ``[B, 3, H, W]`` on the model's device and write one PNG each.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torchvision.utils import save_image

from fastflow.train.checkpoint import atomic_write

PAPER_STEPS = [0.0, 0.25, 0.5, 0.75, 1.0]


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """Save uint8 images ``[N, 3, H, W]`` as a grid of ``nrow`` images per row (written atomically:
    a failed write leaves no partial PNG); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    save_image(images.detach().float().cpu() / 255.0, png, format="png", nrow=nrow, padding=2, pad_value=1.0)
    atomic_write(path, png.getvalue())
    return path


@torch.no_grad()
def sample_grid(
    model: torch.nn.Module, n: int, temperature: float, path: Path, seed: int, nonfinite: str = "raise"
) -> Path:
    """``n`` samples at ``temperature`` (z from its prior, v ~ N(0, T^2 I)) in a square-ish grid;
    ``nonfinite`` as in ``ImageFlowModel.decode`` ("warn" during training, "raise" otherwise)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    images = model.sample(n, temperature=temperature, generator=generator, nonfinite=nonfinite)
    return save_grid(images, path, nrow=max(1, round(n**0.5)))


@torch.no_grad()
def switch_grid(
    model: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, path: Path, nonfinite: str = "raise"
) -> Path:
    """One row per pair: x0, x1, decode(z1, v0), decode(z0, v1) (the paper's switch figure)."""
    switched = model.switch(x0, x1, nonfinite=nonfinite)
    rows = torch.stack([x0, x1, switched[:, 0], switched[:, 1]], dim=1)
    return save_grid(rows.flatten(0, 1), path, nrow=4)


@torch.no_grad()
def interpolation_grid(
    model: torch.nn.Module,
    x0: torch.Tensor,
    x1: torch.Tensor,
    path: Path,
    alphas: list[float] = PAPER_STEPS,
    betas: list[float] = PAPER_STEPS,
    nonfinite: str = "raise",
) -> Path:
    """For one pair ``[1, 3, H, W]``: row i = z at alphas[i], column j = v at betas[j]."""
    grid = model.interpolate(x0, x1, alphas=list(alphas), betas=list(betas), nonfinite=nonfinite)
    return save_grid(grid.flatten(0, 1), path, nrow=len(betas))


@torch.no_grad()
def reconstruction_grid(model: torch.nn.Module, x: torch.Tensor, path: Path) -> tuple[Path, int]:
    """Originals (first row) over decode(encode(x)) (second row); returns the path and the largest
    pixel error (0 when the round trip is exact)."""
    recon = model.decode(*model.encode(x))
    error = int((recon.int() - x.int()).abs().max())
    return save_grid(torch.cat([x, recon]), path, nrow=x.shape[0]), error
