"""A whole Wolf step (forward + backward) on the cpu backend on the CPU with one of its CPU
formulations switched off, against the same step with everything on, in one process. An op's switch
runs its ``"reference"`` implementation instead (:func:`fastflow.ops.backends.replaced`):

- ``coupling_net``: the coupling networks as row GEMMs (:mod:`fastflow.ops.cpu.coupling_net`); off:
  ``conv2d`` and the network's own ops;
- ``cond_bias_elu``: the C++ bias + ELU kernels (``csrc/cond_bias_elu.cpp``); off: torch's
  ``F.elu(h + bias)``;
- ``affine_coupling``: the C++ coupling kernels (``csrc/affine_coupling.cpp``); off: the plain-PyTorch
  coupling (slices, scale, ``torch.cat``);
- ``inplace`` (with ``--no-grad``): no-grad flow sequences running their couplings in place
  (``Flow.writes_in_place``); off: out of place;
- ``actnorm``: the ActNorms that follow a coupling folded into its kernels (``Flow.folds_actnorm``);
  off: each ActNorm its own torch ops.

    python -m benchmarks cpu_ab --switch coupling_net   # CIFAR-10 Wolf, batch 16, 2 threads, 8 rounds
    python -m benchmarks cpu_ab --switch inplace --no-grad   # the loss alone, under no_grad

The two take one step each per round, the order reversed every other round; the speed-up is the
median of the paired per-round ratios (off time / on time). Minor page faults per step
(``getrusage``) show what the allocator does: each one is a fresh page the kernel had to zero. After
the timed rounds each variant takes one more step under :class:`benchmarks._common.StepMemory` (peak
RSS rise).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import time
from collections.abc import Iterator

import torch

from benchmarks._common import StepMemory, cpu_model, median, paired_ratio
from benchmarks.bench_models import Resolution, model_config
from fastflow.flows.coupling import AffineCoupling
from fastflow.models import build_model
from fastflow.ops import backends

OP_SWITCHES = ("coupling_net", "cond_bias_elu", "affine_coupling")  # off: the op's reference implementation
# switch -> (layer class, the attribute FlowSequence reads, its value when switched off)
LAYER_SWITCHES: dict[str, tuple[type, str, object]] = {
    "inplace": (AffineCoupling, "writes_in_place", False),
    "actnorm": (AffineCoupling, "folds_actnorm", lambda self: False),
}
SWITCHES = (*OP_SWITCHES, *LAYER_SWITCHES)
NO_GRAD_ONLY = ("inplace",)  # switches that change nothing while autograd records


@contextlib.contextmanager
def switched_off(switch: str, off: bool) -> Iterator[None]:
    """The formulation ``switch`` forced off while ``off`` is True."""
    if switch in OP_SWITCHES:
        with backends.replaced(switch, "reference") if off else contextlib.nullcontext():
            yield
        return
    owner, name, off_value = LAYER_SWITCHES[switch]
    chosen = getattr(owner, name)
    if off:
        setattr(owner, name, off_value)
    try:
        yield
    finally:
        setattr(owner, name, chosen)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks cpu_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--switch", choices=SWITCHES, required=True, help="the formulation switched off")
    parser.add_argument("--config", default="cifar10_wolf", help="a bundled config, {dataset}_{kind}")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--no-grad", action="store_true", help="time the loss alone under no_grad")
    args = parser.parse_args(argv)
    if args.switch in NO_GRAD_ONLY and not args.no_grad:
        parser.error(f"--switch {args.switch} changes only no-grad runs: add --no-grad")
    torch.set_num_threads(args.threads)
    dataset, kind = args.config.split("_", 1)
    cfg = model_config(Resolution(dataset, batch=args.batch, repeats=1, variants=("cpu",)), kind)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, 256, (args.batch, cfg.in_channels, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    model.initialize(x, generator=torch.Generator().manual_seed(0))
    model.set_backend("cpu")

    def step(off: bool) -> tuple[float, int]:
        with switched_off(args.switch, off):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            if args.no_grad:
                with torch.no_grad():
                    model.loss(x)
            else:
                model.zero_grad(set_to_none=True)
                model.loss(x)["loss"].backward()
            return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    load = os.getloadavg()
    what = "loss under no_grad" if args.no_grad else "forward + backward"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} | {cpu_model()} | {args.threads} threads | {args.config} batch "
        f"{args.batch} | {what} | {args.rounds} rounds | load {load[0]:.2f} {load[1]:.2f}"
    )
    step(False), step(True)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    faults: dict[bool, list[int]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for off in (False, True) if round_ % 2 == 0 else (True, False):
            seconds, count = step(off)
            times[off].append(seconds)
            faults[off].append(count)
    for off, name in ((True, "off"), (False, "on")):
        with StepMemory("cpu") as memory:
            step(off)
        rise = "not measurable" if memory.bytes is None else f"{memory.bytes / 2**20:.0f} MiB"
        print(
            f"{args.switch} {name}: step {median(times[off]):.3f} s, {median(faults[off]):.0f} minor page faults, "
            f"peak memory rise {rise}"
        )
    speedup = paired_ratio(times[True], times[False])
    print(f"{args.switch} on vs off: {speedup:.3f}x (median of paired ratios)")
    return speedup


if __name__ == "__main__":
    main()
