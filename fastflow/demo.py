"""``fastflow demo``: train a small Wolf on the embedded photo patches on the CPU, then run every
command on it and compare with PNG. Writes ``summary.json`` and prints a table."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from fastflow.analysis.baseline import png_bits_per_dim
from fastflow.inference import commands
from fastflow.inference.rundir import load_run
from fastflow.runfiles import RunFiles
from fastflow.schema import AT_LEAST_ONE, POSITIVE, check
from fastflow.train.config import load_run_config
from fastflow.train.loop import train
from fastflow.train.metrics import MetricsLog

PROBE_TRAIN_IMAGES = 1000
TRAIN_SECONDS = 150.0
# A model trained for minutes can overflow its inverse on a few draws (fastflow.inference.sampling says
# why): the sample grids draw those again and the summary counts them. Switched and interpolated codes
# come from real images and cannot be drawn again: the demo warns, counts them and shows them as black or
# white pixels (as the trainer's grids do) instead of failing.
DEMO_NONFINITE = "warn"
# On top of the embedded data set's defaults (batch 16, warmup 20; fastflow.data.registry).
DEMO_TRAIN = {
    "dataset": "embedded",
    "steps": 2000,
    "valid_interval": 100,
    "checkpoint_interval": 100,
    "eval_k": 5,
    "num_samples": 36,
    "sample_temperatures": [0.7, 1.0],
}


def run_demo(
    out_dir: str | Path,
    config: str = "demo_wolf",
    steps: int | None = None,
    seconds: float = TRAIN_SECONDS,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``out_dir/run`` from scratch (replacing an earlier demo run there) for ``steps`` steps or
    ``seconds`` of wall time, whichever comes first, then write every output; returns the summary."""
    if steps is not None:
        check("steps", steps, int, AT_LEAST_ONE)
    check("seconds", seconds, float, POSITIVE)
    out = Path(out_dir)
    started = time.time()
    overrides = dict(DEMO_TRAIN, **({"steps": steps} if steps else {}))
    model_config, train_config = load_run_config(config, overrides)
    files = RunFiles(out / "run")
    if files.root.exists():
        shutil.rmtree(files.root)
    trained = train(model_config, train_config, files.root, device=device, progress=progress, max_seconds=seconds)
    train_s = time.time() - started

    run = load_run(files.root, "checkpoint", device)
    data = commands.run_datasets(run)
    first_valid = next(r for r in MetricsLog(files.metrics).read() if r["split"] == "valid")
    summary: dict[str, Any] = {
        "config": config,
        "model": run.model.kind,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "steps": trained["step"],
        "batch_size": train_config.batch_size,
        "threads": torch.get_num_threads(),
        "train_images": len(data["train"]),
        "valid_images": len(data["valid"]),
        "valid_bpd_at_step_0": first_valid["bpd"],
        "valid_bpd": trained["valid_bpd"],
        "valid_kl_bpd": trained["valid_kl_bpd"],
        "png_bpd": png_bits_per_dim(data["valid"]),
        "train_seconds": train_s,
    }
    samples = commands.sample(run, train_config.sample_temperatures, n=36, out_dir=out / "samples", nonfinite="redraw")
    summary["samples_redrawn"] = {f"{t:g}": k for t, k in zip(samples["temperatures"], samples["redrawn"])}
    outputs = {
        "samples": samples["paths"],
        "reconstruct": commands.reconstruct(run, n=16, out=out / "reconstruct.png"),
    }
    if run.model.has_z:
        outputs["switch"] = commands.switch(run, pairs=8, out=out / "switch.png", nonfinite=DEMO_NONFINITE)["path"]
        outputs["interpolate"] = commands.interpolate(run, pairs=2, out_dir=out, nonfinite=DEMO_NONFINITE)["paths"]
    probe = commands.probe(run, max_train=PROBE_TRAIN_IMAGES, out=out / "probe.json")
    summary.update(
        reconstruction_max_pixel_error=outputs["reconstruct"]["max_pixel_error"],
        probe_accuracy=probe["accuracy"],
        wall_seconds=time.time() - started,
        files={
            "run": str(files.root),
            "metrics": str(files.metrics),
            "bpd_plot": str(files.plot),
            "samples": outputs["samples"],
            "reconstruct": outputs["reconstruct"]["path"],
            "switch": outputs.get("switch"),
            "interpolate": outputs.get("interpolate"),
            "probe": probe["path"],
            "summary": str(out / "summary.json"),
        },
    )
    commands.write_json(out / "summary.json", summary)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """The demo's printed table."""
    probe = s["probe_accuracy"]
    rows = [
        ("model", f"{s['model']} ({s['config']}, {s['parameters']:,} parameters)"),
        ("data", f"sklearn sample photos, {s['train_images']} train / {s['valid_images']} valid patches"),
        (
            "training",
            f"{s['steps']} steps of {s['batch_size']} patches in {s['train_seconds']:.0f} s ({s['threads']} thread(s))",
        ),
        ("valid bits/dim, step 0", f"{s['valid_bpd_at_step_0']:.3f}"),
        ("valid bits/dim, final (k=5)", f"{s['valid_bpd']:.3f}  (KL part {s['valid_kl_bpd']:.4f})"),
        ("PNG, max compression", f"{s['png_bpd']:.3f} bits/dim"),
        (
            "samples",
            "36 per temperature, all finite; drawn again after an overflow: "
            + ", ".join(f"T={t} {k}" for t, k in s["samples_redrawn"].items()),
        ),
        ("reconstruction error", f"{s['reconstruction_max_pixel_error']} (max |x - decode(encode(x))|, pixels)"),
        ("probe (which photo)", ", ".join(f"{k} {100 * v:.1f}%" for k, v in probe.items())),
        ("wall time", f"{s['wall_seconds']:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append("files:")
    for name, value in s["files"].items():
        for path in value if isinstance(value, list) else [value]:
            if path:
                lines.append(f"  {name:<12} {path}")
    return "\n".join(lines)
