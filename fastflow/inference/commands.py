"""The operations behind ``fastflow eval / sample / switch / interpolate / reconstruct / probe``.

Each takes a :class:`~fastflow.inference.rundir.LoadedRun` and returns a dict of results that includes
the paths it wrote; by default outputs go into the run folder.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fastflow.analysis.probe import linear_probe
from fastflow.analysis.visualize import (
    PAPER_STEPS,
    interpolation_grid,
    reconstruction_grid,
    sample_grid,
    save_grid,
    switch_grid,
)
from fastflow.data import build_datasets
from fastflow.errors import UsageError
from fastflow.inference.rundir import LoadedRun
from fastflow.inference.sampling import OVERFLOW_REASON, finite_samples
from fastflow.models.base import NONFINITE_POLICIES
from fastflow.schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check
from fastflow.seeding import INTERPOLATE_IMAGES, RECONSTRUCT_IMAGES, SWITCH_IMAGES, mix_seed
from fastflow.train.checkpoint import atomic_write
from fastflow.train.distributed import Context
from fastflow.train.evaluate import evaluate_bpd

SPLITS = ("train", "valid")


def run_datasets(run: LoadedRun, data_path: str | None = None) -> dict[str, Dataset]:
    """The run's (unaugmented) train and valid splits; ``data_path`` overrides the saved one."""
    t = run.train_config
    train, valid = build_datasets(t.dataset, data_path or t.data_path, run.model_config.image_size)
    return {"train": train, "valid": valid}


def pick_images(dataset: Dataset, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct images drawn with ``seed``: uint8 ``[count, 3, H, W]``."""
    if count > len(dataset):
        raise UsageError(f"asked for {count} images, but the split has only {len(dataset)}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return torch.stack([dataset[int(i)][0] for i in order])


def _device(run: LoadedRun) -> torch.device:
    return next(run.model.parameters()).device


def _check_common(split: str, seed: int) -> None:
    if split not in SPLITS:
        raise UsageError(f"split must be one of {SPLITS}, got {split!r}")
    check("seed", seed, int, NON_NEGATIVE)


def _run_images(run: LoadedRun, split: str, data_path: str | None, count: int, seed: int) -> torch.Tensor:
    """:func:`pick_images` from the run's ``split``, on the model's device."""
    return pick_images(run_datasets(run, data_path)[split], count, seed).to(_device(run))


def _require_z(run: LoadedRun, what: str) -> None:
    if not run.model.has_z:
        raise UsageError(f"{what} needs a model with a global code z (wolf); {run.checkpoint} is a {run.model.kind}")


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
    return path


def evaluate(
    run: LoadedRun,
    split: str = "valid",
    k: int = 5,
    limit: int = 0,
    batch_size: int = 0,
    data_path: str | None = None,
    seed: int = 0,
    out: Path | None = None,
) -> dict[str, Any]:
    """Bits/dim of ``split`` with ``k`` samples per image; writes ``eval_<split>.json``."""
    _check_common(split, seed)
    check("k", k, int, AT_LEAST_ONE)
    check("limit", limit, int, NON_NEGATIVE)  # 0: every image
    check("batch_size", batch_size, int, NON_NEGATIVE)  # 0: the run's eval_batch_size
    dataset = run_datasets(run, data_path)[split]
    ctx = Context(0, 1, _device(run))
    result = evaluate_bpd(run.model, dataset, batch_size or run.train_config.eval_batch_size, k, seed, ctx, limit)
    result.update(split=split, k=k, step=run.step, checkpoint=str(run.checkpoint))
    result["path"] = str(write_json(out or run.files.root / f"eval_{split}.json", result))
    return result


def sample(
    run: LoadedRun,
    temperatures: list[float],
    n: int = 64,
    seed: int = 0,
    out_dir: Path | None = None,
    nonfinite: str = "raise",
) -> dict[str, Any]:
    """One grid of ``n`` samples per temperature: ``samples/sample_t<T>.png``. ``nonfinite``: "raise" (the
    CLI) or "warn" as in ``ImageFlowModel.decode``, or "redraw": draws whose decode overflows are drawn
    again (:func:`~fastflow.inference.sampling.finite_samples`), with a warning saying how many and why;
    ``redrawn`` counts them per temperature (0 unless "redraw")."""
    for t in temperatures:  # every one before any grid is written
        check("temperature", t, float, NON_NEGATIVE)
    check("n", n, int, AT_LEAST_ONE)
    check("seed", seed, int, NON_NEGATIVE)
    if nonfinite not in (*NONFINITE_POLICIES, "redraw"):
        raise UsageError(f"nonfinite must be one of {(*NONFINITE_POLICIES, 'redraw')}, got {nonfinite!r}")
    folder = out_dir or run.files.samples
    paths, redrawn = [], []
    for t in temperatures:
        path = folder / f"sample_t{t:g}.png"
        if nonfinite != "redraw":
            paths.append(str(sample_grid(run.model, n, t, path, seed, nonfinite)))
            redrawn.append(0)
            continue
        generator = torch.Generator(device=_device(run)).manual_seed(seed)
        images, count = finite_samples(run.model, n, t, generator)
        if count:
            warnings.warn(
                f"{count} of the {n} samples at temperature {t:g} were drawn again: {OVERFLOW_REASON}", stacklevel=2
            )
        paths.append(str(save_grid(images, path, nrow=max(1, round(n**0.5)))))
        redrawn.append(count)
    return {"temperatures": temperatures, "n": n, "paths": paths, "redrawn": redrawn}


def switch(
    run: LoadedRun,
    pairs: int = 8,
    split: str = "valid",
    seed: int = 0,
    data_path: str | None = None,
    out: Path | None = None,
    nonfinite: str = "raise",
) -> dict[str, Any]:
    """``switch.png``: one row per pair, x0 | x1 | decode(z1, v0) | decode(z0, v1)."""
    _check_common(split, seed)
    check("pairs", pairs, int, AT_LEAST_ONE)
    _require_z(run, "switch")
    images = _run_images(run, split, data_path, 2 * pairs, mix_seed(seed, SWITCH_IMAGES))
    path = switch_grid(run.model, images[:pairs], images[pairs:], out or run.files.root / "switch.png", nonfinite)
    return {"pairs": pairs, "path": str(path)}


def interpolate(
    run: LoadedRun,
    pairs: int = 1,
    alphas: list[float] = PAPER_STEPS,
    betas: list[float] = PAPER_STEPS,
    split: str = "valid",
    seed: int = 0,
    data_path: str | None = None,
    out_dir: Path | None = None,
    nonfinite: str = "raise",
) -> dict[str, Any]:
    """``interpolate_pair<i>.png`` per pair: rows z((1-a) z0 + a z1), columns v((1-b) v0 + b v1)."""
    _check_common(split, seed)
    check("pairs", pairs, int, AT_LEAST_ONE)
    for name, weights in (("alphas", alphas), ("betas", betas)):
        if not check(name, weights, list[float]):
            raise UsageError(f"{name} must hold at least one number")
    _require_z(run, "interpolate")
    images = _run_images(run, split, data_path, 2 * pairs, mix_seed(seed, INTERPOLATE_IMAGES))
    folder = out_dir or run.files.root
    paths = [
        str(
            interpolation_grid(
                run.model,
                images[i : i + 1],
                images[pairs + i : pairs + i + 1],
                folder / f"interpolate_pair{i}.png",
                alphas,
                betas,
                nonfinite,
            )
        )
        for i in range(pairs)
    ]
    return {"alphas": list(alphas), "betas": list(betas), "paths": paths}


def reconstruct(
    run: LoadedRun,
    n: int = 16,
    split: str = "valid",
    seed: int = 0,
    data_path: str | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """``reconstruct.png``: originals over decode(encode(x)); reports the largest pixel error."""
    _check_common(split, seed)
    check("n", n, int, AT_LEAST_ONE)
    images = _run_images(run, split, data_path, n, mix_seed(seed, RECONSTRUCT_IMAGES))
    path, error = reconstruction_grid(run.model, images, out or run.files.root / "reconstruct.png")
    return {"n": n, "max_pixel_error": error, "path": str(path)}


def probe(
    run: LoadedRun,
    max_train: int = 0,
    max_test: int = 0,
    c: float = 1.0,
    data_path: str | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Linear SVMs on z, v and raw pixels (train split -> valid split); writes ``probe.json``."""
    check("max_train", max_train, int, NON_NEGATIVE)  # 0: every image
    check("max_test", max_test, int, NON_NEGATIVE)
    check("C", c, float, POSITIVE)
    data = run_datasets(run, data_path)
    result = linear_probe(
        run.model, data["train"], data["valid"], max_train, max_test, c, run.train_config.eval_batch_size
    )
    result["path"] = str(write_json(out or run.files.root / "probe.json", result))
    return result
