"""Where a training step's time goes: torch.profiler over one Wolf step (forward + backward + AdamW)
per backend, as a markdown table of CPU time by op (and optionally by op and input shape), the
backends side by side.

    python -m benchmarks profile_step                       # CIFAR-10 Wolf, batch 16, 2 threads
    python -m benchmarks profile_step --by-shape --top 25   # split by input shapes
    python -m benchmarks profile_step --classes --rounds 4  # summed by class of op (CLASSES)

Each backend takes one warm-up step, then one profiled step; the backends alternate over
``--rounds`` rounds and each op's time is the median over them. Self CPU time is counted (an op's
own time, its children's excluded), so the column sums to the step. With two rounds the small
classes drift by up to 1.8x between identical work (the optimizer's ops): take four or more.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from fastflow.models import build_model
from fastflow.train.optimizer import adamw

# class of op -> pattern of the profiler's op names (the first class that matches takes an op; what no
# pattern matches is "other"). Classes group by what an op is, not who calls it: the weight norm's
# and the optimizer's elementwise ops are both "elementwise".
CLASSES: dict[str, str] = {
    "GEMM and convolution": r"aten::(mm|addmm|bmm|baddbmm|mkldnn_convolution|convolution_backward)$"
    r"|fastflow::(im2col_rows|col2im_rows)$",
    "ELU and bias + ELU": r"aten::elu(_backward)?$|fastflow::cond_bias_elu",
    "coupling": r"fastflow::coupling|aten::(softplus|softplus_backward|tanh|tanh_backward|sigmoid|log_sigmoid)",
    "optimizer-only ops": r"Optimizer\.|aten::(lerp_|addcdiv_|addcmul_|_fused_adamw?_)$|aten::_foreach",
    "views and allocation": r"aten::(view|_unsafe_view|as_strided|permute|slice|select|reshape|expand|t|transpose"
    r"|unsqueeze|squeeze|flatten|alias|detach|empty|empty_strided|empty_like|zeros|zeros_like|new_empty"
    r"|new_zeros|unbind|split|chunk|narrow|resize_)$",
    "copies, casts, cat": r"aten::(copy_|_to_copy|to|clone|contiguous|cat|stack|flip|index|index_put_|fill_|zero_)$",
    "elementwise and reductions": r"aten::",
    "autograd and Python autograd Functions": r"autograd::|Backward|Function$",
}


def op_class(name: str) -> str:
    return next((c for c, pattern in CLASSES.items() if re.search(pattern, name)), "other")


def profiled_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, by_shape: bool) -> dict:
    """``{key: (calls, self CPU ms)}`` of one step; key is the op name (and its input shapes)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=by_shape) as prof:
        opt.zero_grad(set_to_none=True)
        model.loss(x)["loss"].backward()
        opt.step()
    table = {}
    for e in prof.key_averages(group_by_input_shape=by_shape):
        key = f"{e.key} {e.input_shapes}" if by_shape else e.key
        table[key] = (e.count, e.self_cpu_time_total / 1e3)
    return table


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks profile_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cifar10_wolf")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["reference", "cpu"])
    parser.add_argument("--by-shape", action="store_true", help="one row per (op, input shapes)")
    parser.add_argument("--classes", action="store_true", help="also one row per class of op (CLASSES)")
    parser.add_argument("--top", type=int, default=20, help="rows shown (the rest summed in one row)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.config)
    size = model.config.image_size
    x = torch.randint(0, 256, (args.batch, model.config.in_channels, size, size), dtype=torch.uint8)
    model.initialize(x, generator=torch.Generator().manual_seed(0))
    opt = adamw(model.parameters(), lr=1e-5)
    load = os.getloadavg()
    samples: dict[str, list[dict]] = defaultdict(list)
    for backend in args.backends:  # warm-up
        model.set_backend(backend)
        profiled_step(model, opt, x, False)
    for round_ in range(args.rounds):
        for backend in args.backends if round_ % 2 == 0 else reversed(args.backends):
            model.set_backend(backend)
            samples[backend].append(profiled_step(model, opt, x, args.by_shape))
    merged = {}
    for backend, runs in samples.items():
        keys = set().union(*runs)
        merged[backend] = {
            k: (max(r.get(k, (0, 0))[0] for r in runs), statistics.median(r.get(k, (0, 0.0))[1] for r in runs))
            for k in keys
        }
    first = args.backends[0]
    order = sorted(set().union(*merged.values()), key=lambda k: -max(m.get(k, (0, 0))[1] for m in merged.values()))
    head = (
        "| op | "
        + " | ".join(f"{b} calls | {b} ms" for b in args.backends)
        + " | "
        + " | ".join(f"{b} / {first}" for b in args.backends[1:])
    )
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {args.config} batch {args.batch}, {args.threads} threads, "
        f"median of {args.rounds} profiled steps per backend, self CPU time; load {load[0]:.2f} {load[1]:.2f}",
        "",
        head + " |",
        "|" + " --- |" * (1 + 2 * len(args.backends) + len(args.backends) - 1),
    ]

    def row(name: str, keys: list[str]) -> str:
        cells = []
        for b in args.backends:
            calls = sum(merged[b].get(k, (0, 0))[0] for k in keys)
            ms = sum(merged[b].get(k, (0, 0.0))[1] for k in keys)
            cells.append(f"{calls} | {ms:.0f}")
        ref = sum(merged[first].get(k, (0, 0.0))[1] for k in keys)
        ratios = [
            f"{sum(merged[b].get(k, (0, 0.0))[1] for k in keys) / ref:.2f}" if ref else "-" for b in args.backends[1:]
        ]
        return f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |"

    for k in order[: args.top]:
        lines.append(row(f"`{k}`", [k]))
    lines.append(row(f"{len(order) - args.top} other ops", order[args.top :]))
    lines.append(row("**step total**", order))
    if args.classes:
        lines += ["", head.replace("| op |", "| class of op |") + " |", lines[3]]
        classes = defaultdict(list)
        for k in order:
            classes[op_class(k.split(" [")[0])].append(k)
        for name in [*CLASSES, "other"]:
            if classes[name]:
                lines.append(row(name, classes[name]))
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
