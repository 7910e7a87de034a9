"""Peak memory and step time of a training step: standard backprop against memory-efficient
(inputs recomputed from outputs), side by side.

Each measurement runs in a fresh subprocess so that its peak resident set size (``ru_maxrss``, the
whole process: parameters, optimiser state, activations, allocator slack) is its own; on CUDA the
peak is ``torch.cuda.max_memory_allocated``. The step is forward + backward + AdamW on random uint8
images, timed after ``warmup`` untimed steps (median of ``repeats``).

    python -m benchmarks memory --config celeba256_wolf --batch 1 4 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(config: str, batch: int, memory_efficient: bool, repeats: int, device: str, warmup: int = 1) -> dict:
    """One measurement, run in this process (call through :func:`run_isolated`)."""
    import resource

    import torch

    from fastflow.config import load_model_config
    from fastflow.models import build_model

    torch.manual_seed(0)
    cfg = load_model_config(config)
    cfg.memory_efficient = memory_efficient
    model = build_model(cfg).to(device)
    x = torch.randint(0, 256, (batch, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=device)
    model.initialize(x)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for step in range(repeats + warmup):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model.loss(x)["loss"].backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "config": config,
        "batch": batch,
        "memory_efficient": memory_efficient,
        "device": device,
        "step_s": sorted(times)[len(times) // 2],
        "peak_bytes": peak,
        "rss_before_step_bytes": base_rss * 1024,
    }


def run_isolated(
    config: str, batch: int, memory_efficient: bool, repeats: int, device: str, warmup: int = 1, timeout: float = 3600
) -> dict:
    """:func:`measure` in a fresh Python process; an out-of-memory kill is reported, not raised."""
    code = (
        f"import json; from benchmarks.bench_memory import measure; "
        f"print(json.dumps(measure({config!r}, {batch}, {memory_efficient}, {repeats}, {device!r}, {warmup})))"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"config": config, "batch": batch, "memory_efficient": memory_efficient, "error": "timeout"}
    if out.returncode != 0:
        reason = "killed (out of memory?)" if out.returncode < 0 else out.stderr.strip().splitlines()[-1]
        return {"config": config, "batch": batch, "memory_efficient": memory_efficient, "error": reason}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(
    configs: list[str],
    batches: list[int],
    repeats: int,
    device: str,
    modes: tuple[str, ...] = ("standard", "memory-efficient"),
    warmup: int = 1,
) -> list[dict]:
    """Measure every (config, batch) in each of ``modes``; print a table and return its rows."""
    rows = []
    print(f"{'config':<24}{'batch':>6}{'mode':>18}{'step s':>10}{'peak GiB':>10}{'ratio':>8}")
    for config in configs:
        for batch in batches:
            pair = [run_isolated(config, batch, mode == "memory-efficient", repeats, device, warmup) for mode in modes]
            for row in pair:
                ratio = ""
                if len(pair) == 2 and "error" not in row and "error" not in pair[0]:
                    ratio = f"{row['peak_bytes'] / pair[0]['peak_bytes']:.2f}"
                mode = "memory-efficient" if row["memory_efficient"] else "standard"
                if "error" in row:
                    print(f"{config:<24}{batch:>6}{mode:>18}  {row['error']}")
                else:
                    print(
                        f"{config:<24}{batch:>6}{mode:>18}{row['step_s']:>10.2f}"
                        f"{row['peak_bytes'] / 2**30:>10.2f}{ratio:>8}"
                    )
                rows.append(row)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=["celeba256_wolf"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    parser.add_argument(
        "--modes", nargs="+", default=["standard", "memory-efficient"], choices=["standard", "memory-efficient"]
    )
    args = parser.parse_args()
    main(args.config, args.batch, args.repeats, args.device, tuple(args.modes), args.warmup)
