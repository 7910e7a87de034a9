"""The result files of ``python -m benchmarks suite``: RESULTS.md (our block only), results.csv, throughput.png.

Everything written here comes from the rows a run measured; the text around the numbers only says how
they were measured.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from benchmarks._common import markdown_table, paired_ratio, replace_block, write_csv
from benchmarks.bench_models import ROSINALITY, Resolution

SPEEDUP_TARGET = 1.3

TRAIN_COLUMNS = [
    ("resolution", "resolution", ""),
    ("depth", "depth", ""),
    ("batch", "batch", "d"),
    ("model", "model", ""),
    ("variant", "variant", ""),
    ("params (M)", "params_m", ".2f"),
    ("fwd GFLOP/img", "gflop_per_image", ".3g"),
    ("FLOPs vs Glow", "flops_vs_glow", ".2f"),
    ("train img/s", "train_img_s", ".3g"),
    ("vs Glow cpu", "vs_glow", ".2f"),
    ("vs own cpu", "vs_own_cpu", ".2f"),
    ("vs reference", "vs_reference", ".2f"),
    ("step memory MiB", "step_mem_mib", ".1f"),
    ("resident MiB", "state_mib", ".1f"),
]
SAMPLE_COLUMNS = [
    ("resolution", "resolution", ""),
    ("model", "model", ""),
    ("variant", "variant", ""),
    ("sample img/s (T=0.7)", "sample_img_s", ".3g"),
    ("round-trip max error (8-bit levels)", "roundtrip_max_err", "d"),
    ("after AdamW steps", "adamw_steps", "d"),
]


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "error" not in r]


def _header(info: dict, command: str) -> str:
    load = f"{info['load_average']} before, {info.get('load_average_end')} after"
    return (
        f"Command: `{command}`, run {info['date']} in {info.get('wall_s', 0):.0f} s.\n\n"
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['threads']} torch thread(s) per process, "
        f"device {info['device']}; torch {info['torch']}, Python {info['python']}; "
        f"load average (1, 5, 15 min) {load}."
    )


def _settings(plan: tuple[Resolution, ...], rows: list[dict]) -> str:
    lines = [
        "| resolution | models | batch | timed repeats | depth | variants | sampled variants |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in plan:
        sampled = ", ".join(res.sample_variants or res.variants)
        lines.append(
            f"| {res.name} | {', '.join(res.models)} | {res.batch} | {res.repeats} | {res.depth} | "
            f"{', '.join(res.variants)} | {sampled} |"
        )
    method = next((r["memory_method"] for r in _ok(rows)), "-")
    return "\n".join(lines) + (
        "\n\nTraining throughput: images/s of forward + backward + AdamW (lr 1e-4), the median of the timed "
        "steps after one warm-up step. Every (model, variant) of a resolution takes one step per round, the "
        "order reversed every other round, and each speed ratio is the median over rounds of the paired "
        "step-time ratio, so that load from other processes cancels. Random uint8 images, one seeded batch; "
        "each resolution runs in its own process. Depth `1/k`: every step count n of the bundled config "
        "becomes ceil(n / k), for all three models alike (the FLOPs column is that of the model that ran). "
        "FLOPs: `torch.utils.flop_counter.FlopCounterMode` over the forward of the loss (2 x multiply-adds, "
        "per image). Step memory: how far memory rises during one training step above what is resident "
        f"before it, measured as {method}; resident = parameters + gradients + AdamW state, counted from "
        "the tensors. `vs Glow cpu`: speed over stock Glow with the cpu backend at the same resolution; "
        "`vs own torch`: over the same model's torch row; `vs reference`: over the same model computed "
        "the paper's way (`backend=reference`: plain PyTorch ops, no extension, no fused op). "
        "Sampling: after one encode/decode round trip "
        "(which warms the inverse up), the median time of drawing a batch of samples at T = 0.7."
    )


def _rosinality(rows: list[dict]) -> str:
    ours = {r["resolution"]: r for r in _ok(rows) if r["model"] == "glow" and r["variant"] == "cpu"}
    theirs = [r for r in _ok(rows) if r["model"] == ROSINALITY]
    if not theirs:
        return "Not run (pass `--rosinality PATH/TO/rosinality/glow-pytorch/model.py`)."
    lines = [
        "| resolution | batch | fastflow Glow img/s | rosinality Glow img/s | fastflow speed / rosinality "
        "(paired) | params (fastflow, rosinality) | fwd GFLOP/img (fastflow, rosinality) | "
        "step memory MiB (fastflow, rosinality) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in theirs:
        o = ours[t["resolution"]]
        speed = paired_ratio(t["train_step_times_s"], o["train_step_times_s"])
        lines.append(
            f"| {t['resolution']} | {t['batch']} | {o['train_img_s']:.3g} | {t['train_img_s']:.3g} | "
            f"{speed:.2f} | {o['params']:,}, {t['params']:,} | "
            f"{o['gflop_per_image']:.3g}, {t['gflop_per_image']:.3g} | "
            f"{_num(o['step_mem_mib'])}, {_num(t['step_mem_mib'])} |"
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _variants(rows: list[dict]) -> str:
    """Each non-cpu variant's speed-up over its own cpu backend, per resolution and model."""
    table: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in _ok(rows):
        if r["variant"] != "cpu" and r["model"] != ROSINALITY and r.get("vs_own_cpu"):
            table[(r["variant"], r["resolution"])][r["model"]] = r["vs_own_cpu"]
    if not table:
        return "Only the cpu backend ran."
    models = sorted({m for v in table.values() for m in v})
    lines = [
        "| variant | resolution | " + " | ".join(models) + f" | all >= {SPEEDUP_TARGET}x? |",
        "| --- | --- | " + " | ".join("---" for _ in models) + " | --- |",
    ]
    for (variant, res), speedups in table.items():
        cells = [f"{speedups[m]:.2f}x" if m in speedups else "-" for m in models]
        verdict = "yes" if all(s >= SPEEDUP_TARGET for s in speedups.values()) else "no"
        lines.append(f"| {variant} | {res} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def _ops(name: str, result: list[dict] | str) -> str:
    if isinstance(result, str):
        return f"`{name}`: {result}"
    if not result:
        return f"`{name}`: no rows."
    keys = list(result[0])
    columns = [(k, k, "") for k in keys]
    shown = [{k: _cell(r.get(k)) for k in keys} for r in result]
    return f"`{name}` (its own table, as returned):\n\n" + markdown_table(shown, columns)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    return "-" if value is None else str(value)


def render(
    info: dict, plan: tuple[Resolution, ...], rows: list[dict], ops: dict[str, list[dict] | str], command: str
) -> str:
    """Our block of RESULTS.md."""
    shown = [{**r, "params_m": r["params"] / 1e6} for r in _ok(rows)]
    failed = [f"- {r['resolution']}: FAILED ({r['error']})" for r in rows if "error" in r]
    where = "GPU" if info["device"] != "cpu" else "CPU"
    parts = [
        f"## Models against stock Glow on the {where} (`python -m benchmarks suite`)",
        _header(info, command),
        _settings(plan, rows),
        "### Training step",
        markdown_table(shown, TRAIN_COLUMNS),
        *failed,
        "### Sampling and encode/decode round trip",
        markdown_table([r for r in shown if r.get("roundtrip_max_err") is not None], SAMPLE_COLUMNS),
        "The round trip `decode(encode(x))` runs on the training batch after the benchmark's training steps "
        "(the last column; variants of a model share its weights, except channels-last, which trains a copy).",
        "### fastflow's stock Glow against rosinality/glow-pytorch (same architecture, same loss)",
        _rosinality(rows),
        f"### Variants against their own cpu backend (target {SPEEDUP_TARGET}x)",
        _variants(rows),
        "### Op benchmarks run from here",
        *(_ops(name, result) for name, result in ops.items()),
    ]
    return "\n\n".join(parts)


COLOURS = {"glow": "C0", "refined_glow": "C1", "wolf": "C2", ROSINALITY: "C3"}
STYLES = {
    "cpu": "o-",
    "cpu+bf16": "s--",
    "cpu+channels_last": "^:",
    "cpu+compile": "v-.",
    "triton": "D-",
    "triton+bf16": "P--",
}


def plot(path: Path, rows: list[dict]) -> None:
    """Training throughput against resolution, one line per (model, variant); log-log. Colour: model,
    line style: variant."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    lines: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    ticks: dict[int, str] = {}
    for r in _ok(rows):
        lines[(r["model"], r["variant"])].append((r["image_size"], r["train_img_s"]))
        ticks[r["image_size"]] = f"{r['image_size']}" + ("" if r["depth"] == "full" else f"\n(depth {r['depth']})")
    fig, ax = plt.subplots(figsize=(9, 5))
    for (model, variant), points in sorted(lines.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, STYLES.get(variant, "x-"), color=COLOURS.get(model), label=f"{model} / {variant}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(ticks), [ticks[k] for k in sorted(ticks)])
    ax.set_xlabel("image size (pixels per side)")
    ax.set_ylabel("training images / s")
    ax.set_title("forward + backward + AdamW step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def csv_rows(info: dict, rows: list[dict], ops: dict[str, list[dict] | str]) -> list[dict]:
    """Model rows, then the op benchmarks' rows, each with a ``section`` column and the run's
    date, machine and torch version."""
    run = {k: info[k] for k in ("date", "cpu", "cores", "threads", "device", "torch")}
    out = [{"section": "models", **run, **{k: v for k, v in r.items() if k != "memory_method"}} for r in rows]
    for name, result in ops.items():
        if isinstance(result, list):
            out += [{"section": name, **run, **r} for r in result]
    return out


def write_all(
    out_dir: Path,
    info: dict,
    plan: tuple[Resolution, ...],
    rows: list[dict],
    ops: dict[str, list[dict] | str],
    command: str,
) -> str:
    """RESULTS.md (our block for this device, other sections kept), results.csv and throughput.png in
    ``out_dir`` (``results_cuda.csv`` and ``throughput_cuda.png`` for a GPU run); returns the block."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if info["device"] == "cpu" else "_cuda"
    write_csv(out_dir / f"results{suffix}.csv", csv_rows(info, rows, ops))
    plot(out_dir / f"throughput{suffix}.png", rows)
    text = render(info, plan, rows, ops, command)
    replace_block(out_dir / "RESULTS.md", f"bench_models{suffix or '_cpu'}", text, "fastflow benchmarks")
    return text
