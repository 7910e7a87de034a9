"""Stock Glow, refined Glow and Wolf side by side: training, memory, FLOPs, sampling, round trip.

Each resolution (CIFAR-10 32, ImageNet 64, CelebA-HQ 256; ``--quick``: the tiny 16 x 16 configs) runs
in its own worker process, which builds the three models (and, given the path of
rosinality/glow-pytorch's ``model.py``, that public Glow at the same architecture), initialises them on
one seeded batch of random uint8 images and measures every (model, variant):

- training throughput: images/s of one forward + backward + AdamW step, the median of ``repeats``
  steps after warm-up; every case takes one step per round in turn (interleaved), so load from
  other processes falls on all of them alike;
- step memory: how far memory rises during one more step above what is resident before it
  (parameters, gradients, AdamW state), see :class:`benchmarks._common.StepMemory`; the resident
  state itself is counted from the tensors;
- forward FLOPs per image: ``torch.utils.flop_counter.FlopCounterMode`` over the loss's forward in
  that step (2 x multiply-adds; counted for the first variant, ``cpu``, of each model);
- sampling throughput at temperature 0.7 (median, interleaved) and the round-trip error
  ``max |decode(encode(x)) - x|`` in 8-bit levels (0 = exact).

Variants (:data:`VARIANTS`): the op backends ``reference`` (the paper's plain-PyTorch way, the yardstick
of every speed claim), ``cpu`` and ``triton`` (CUDA only), bfloat16 autocast
(the flows keep their main path in float32), channels-last weights and activations, and
``torch.compile`` of the loss (opt-in: minutes of compilation per model on a CPU).

Run it through ``python -m benchmarks suite`` (which also writes the result files); this module's own
command line is the worker that :func:`run_isolated` starts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import StepMemory, median, paired_ratio, synchronizer, time_interleaved
from fastflow.config import MODEL_KINDS, ModelConfig, load_model_config
from fastflow.models import build_model
from fastflow.train.compile import compile_regions

ROSINALITY = "rosinality_glow"
REPO = Path(__file__).resolve().parent.parent
MIB = 2**20


@dataclass(frozen=True)
class Variant:
    """How a model is run: op backend, bfloat16 autocast, channels-last layout, compiled repeated blocks
    (:func:`fastflow.train.compile.compile_regions`, the trainer's ``--compile default``)."""

    name: str
    backend: str = "cpu"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False


VARIANTS = {
    v.name: v
    for v in [
        Variant("reference", backend="reference"),
        Variant("reference+compile", backend="reference", compile=True),
        Variant("reference+bf16", backend="reference", bf16=True),
        Variant("reference+bf16+compile", backend="reference", bf16=True, compile=True),
        Variant("cpu"),
        Variant("cpu+bf16", bf16=True),
        Variant("cpu+channels_last", channels_last=True),
        Variant("cpu+compile", compile=True),
        Variant("cpu+bf16+compile", bf16=True, compile=True),
        Variant("triton", backend="triton"),
        Variant("triton+bf16", backend="triton", bf16=True),
    ]
}


@dataclass(frozen=True)
class Resolution:
    """One worker's plan: the configs ``{name}_{kind}``, batch size, timed repeats and variants.

    ``depth_divisor`` > 1 builds a reduced-depth model: every step count n becomes ceil(n / divisor).
    ``sample_repeats``: timed sampling draws, after a round trip has warmed the inverse up;
    ``sample_variants``: the variants whose sampling and round trip are measured (None: all).
    """

    name: str
    batch: int
    repeats: int
    variants: tuple[str, ...]
    depth_divisor: int = 1
    rosinality: bool = False
    sample_repeats: int = 2
    sample_variants: tuple[str, ...] | None = None
    models: tuple[str, ...] = MODEL_KINDS

    @property
    def depth(self) -> str:
        return "full" if self.depth_divisor == 1 else f"1/{self.depth_divisor}"


CPU_VARIANTS = ("reference", "cpu", "cpu+bf16", "cpu+channels_last")
CUDA_VARIANTS = ("reference", "cpu", "triton", "triton+bf16")
# the strongest plain-PyTorch baselines; on a CPU they cost minutes of compilation per model (opt-in there:
# --variants reference+compile reference+bf16+compile ...)
COMPILED_BASELINES = ("reference+compile", "reference+bf16+compile")
CPU_PLAN = (  # sized for about 10 minutes on 2 shared cores
    Resolution("cifar10", batch=2, repeats=5, variants=CPU_VARIANTS, rosinality=True),
    Resolution(
        "imagenet64",
        batch=1,
        repeats=3,
        variants=("reference", "cpu", "cpu+bf16"),
        sample_repeats=1,
        sample_variants=("cpu",),
    ),
    Resolution("celeba256", batch=1, repeats=1, variants=("cpu",), depth_divisor=8, sample_repeats=1),
)
CUDA_PLAN = (
    Resolution("cifar10", batch=64, repeats=5, variants=CUDA_VARIANTS + COMPILED_BASELINES, rosinality=True),
    Resolution("imagenet64", batch=32, repeats=5, variants=CUDA_VARIANTS + COMPILED_BASELINES, rosinality=True),
    Resolution("celeba256", batch=8, repeats=3, variants=CUDA_VARIANTS + COMPILED_BASELINES),
)
QUICK_PLAN = (Resolution("tiny", batch=2, repeats=1, variants=CPU_VARIANTS, sample_repeats=1),)


def default_plan(device: str, quick: bool) -> tuple[Resolution, ...]:
    """The resolutions, batch sizes and variants a run uses unless told otherwise."""
    if quick:
        return (
            tuple(dataclasses.replace(r, variants=CUDA_VARIANTS) for r in QUICK_PLAN)
            if device == "cuda"
            else QUICK_PLAN
        )
    return CUDA_PLAN if device == "cuda" else CPU_PLAN


def model_config(res: Resolution, kind: str) -> ModelConfig:
    """The bundled config ``{res.name}_{kind}``, with its step counts divided for reduced depth."""
    cfg = load_model_config(f"{res.name}_{kind}")
    if res.depth_divisor > 1:

        def scale(n: int) -> int:
            return max(1, math.ceil(n / res.depth_divisor))

        cfg.flow.num_steps = [[scale(n) for n in s] if isinstance(s, list) else scale(s) for s in cfg.flow.num_steps]
    return cfg


# -- one (model, variant) case --------------------------------------------------------------------


@dataclass
class Trainable:
    """A model with its optimiser (shared by the variants that do not change the layout)."""

    net: nn.Module
    opt: torch.optim.Optimizer
    steps: int = 0  # optimiser steps taken so far

    def state_bytes(self) -> int:
        """Parameters + gradients + optimiser state, counted from the tensors."""
        params = sum(p.numel() * p.element_size() for p in self.net.parameters())
        state = sum(
            t.numel() * t.element_size() for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t)
        )
        return 2 * params + state


@dataclass
class Case:
    """Closures that run one (model, variant): a training step, and sampling and a round trip."""

    model: str
    variant: Variant
    trainable: Trainable
    step: Callable[[contextlib.AbstractContextManager], None]
    sample: Callable[[], None] | None = None
    roundtrip: Callable[[], int] | None = None

    @property
    def name(self) -> str:
        return f"{self.model}/{self.variant.name}"


def precision(device: str, variant: Variant) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for the ``+bf16`` variants, nothing otherwise."""
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=variant.bf16)


def fastflow_case(
    kind: str, trainable: Trainable, variant: Variant, x: torch.Tensor, seed: int, sampled: bool = True
) -> Case:
    """Training step, and unless ``sampled`` is False or the loss is compiled, sampling and round
    trip, of a fastflow model under ``variant``. A compiled variant compiles the model's regions in
    place: give it a model of its own (:func:`own_trainable`)."""
    model, device = trainable.net, x.device.type
    if variant.compile:
        model.set_backend(variant.backend)  # the backend the regions are traced with
        compile_regions(model, "default")

    def loss_fn(images: torch.Tensor) -> torch.Tensor:
        return model.loss(images)["loss"]

    generator = torch.Generator(device=x.device)

    def step(forward_context: contextlib.AbstractContextManager) -> None:
        model.set_backend(variant.backend)
        trainable.opt.zero_grad(set_to_none=True)
        with forward_context, precision(device, variant):
            loss = loss_fn(x)
        loss.backward()
        trainable.opt.step()
        trainable.steps += 1

    @contextlib.contextmanager
    def inference() -> Iterator[None]:
        model.set_backend(variant.backend)
        model.eval()
        try:
            with precision(device, variant):
                yield
        finally:
            model.train()

    def sample() -> None:
        generator.manual_seed(seed)
        with inference():
            model.sample(x.shape[0], temperature=0.7, generator=generator)

    def roundtrip() -> int:
        with inference():
            back = model.decode(*model.encode(x))
        return int((back.int() - x.int()).abs().max())

    if variant.compile or not sampled:
        return Case(kind, variant, trainable, step)
    return Case(kind, variant, trainable, step, sample, roundtrip)


def own_trainable(
    shared: Trainable, variant: Variant, optimizer: Callable[[nn.Module], torch.optim.Optimizer]
) -> Trainable:
    """``shared``, or for a variant that changes the model in place (channels-last, compiled regions)
    a copy of its model with an optimiser of its own."""
    if not (variant.channels_last or variant.compile):
        return shared
    net = copy.deepcopy(shared.net)
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return Trainable(net, optimizer(net))


def load_rosinality(path: str) -> ModuleType:
    """The public rosinality/glow-pytorch ``model.py``, imported from ``path`` (never vendored)."""
    spec = importlib.util.spec_from_file_location("rosinality_glow", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rosinality_matches(cfg: ModelConfig) -> bool:
    """Whether rosinality's Glow (one step count for all levels, hidden 512) can build ``cfg``."""
    f = cfg.flow
    return cfg.kind == "glow" and len(set(f.num_steps)) == 1 and set(f.hidden_channels) == {512}


def rosinality_case(module: ModuleType, cfg: ModelConfig, x: torch.Tensor) -> Case:
    """rosinality's Glow at ``cfg``'s architecture, trained on the same loss (bits/dim, uniform
    dequantisation, its own [-0.5, 0.5] pixel scaling)."""
    f = cfg.flow
    net = module.Glow(cfg.in_channels, f.num_steps[0], f.levels, affine=True, conv_lu=f.lu).to(x.device)
    bins = 2**cfg.n_bits
    dims = x[0].numel()
    unit = torch.floor(x.float() / 2 ** (8 - cfg.n_bits)) / bins - 0.5

    def loss() -> torch.Tensor:
        log_p, logdet, _ = net(unit + torch.rand_like(unit) / bins)
        nll = dims * math.log(bins) - (log_p + logdet)
        return (nll / (dims * math.log(2))).mean()

    with torch.no_grad():
        loss()  # its ActNorms initialise themselves on the first batch
    trainable = Trainable(net, torch.optim.AdamW(net.parameters(), lr=1e-4))

    def step(forward_context: contextlib.AbstractContextManager) -> None:
        trainable.opt.zero_grad(set_to_none=True)
        with forward_context:
            value = loss()
        value.backward()
        trainable.opt.step()
        trainable.steps += 1

    return Case(ROSINALITY, VARIANTS["cpu"], trainable, step)


def build_cases(res: Resolution, device: str, rosinality: str | None, seed: int) -> tuple[list[Case], torch.Tensor]:
    """Every (model, variant) of ``res``, models initialised on one seeded batch; and that batch."""
    cases = []
    x = None
    for kind in res.models:
        cfg = model_config(res, kind)
        if x is None:
            gen = torch.Generator().manual_seed(seed)
            x = torch.randint(
                0, 256, (res.batch, cfg.in_channels, cfg.image_size, cfg.image_size), generator=gen, dtype=torch.uint8
            ).to(device)
        torch.manual_seed(seed)
        model = build_model(cfg).to(device)
        model.initialize(x, generator=torch.Generator(device=device).manual_seed(seed))
        shared = Trainable(model, torch.optim.AdamW(model.parameters(), lr=1e-4))
        for name in res.variants:
            variant = VARIANTS[name]
            trainable = own_trainable(shared, variant, lambda net: torch.optim.AdamW(net.parameters(), lr=1e-4))
            sampled = res.sample_variants is None or name in res.sample_variants
            cases.append(fastflow_case(kind, trainable, variant, x, seed, sampled))
        if kind == "glow" and res.rosinality and rosinality and rosinality_matches(cfg):
            torch.manual_seed(seed)
            cases.append(rosinality_case(load_rosinality(rosinality), cfg, x))
    return cases, x


# -- the measurements -----------------------------------------------------------------------------


def measure_training(cases: list[Case], res: Resolution, device: str) -> dict[str, list[float]]:
    """Warm-up (two steps for compiled losses, one otherwise), then interleaved timed steps."""
    null = contextlib.nullcontext
    for case in cases:
        for _ in range(2 if case.variant.compile else 1):
            case.step(null())
    return time_interleaved({c.name: (lambda c=c: c.step(null())) for c in cases}, res.repeats, synchronizer(device))


def measure_memory_and_flops(case: Case, device: str, count_flops: bool) -> tuple[StepMemory, int | None]:
    """One more step under :class:`StepMemory`, its forward under a FlopCounterMode if asked."""
    counter = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
    with StepMemory(device) as memory:
        case.step(counter)
    return memory, counter.get_total_flops() if count_flops else None


def measure_roundtrip_and_sampling(
    cases: list[Case],
    res: Resolution,
    device: str,
) -> tuple[dict[str, int], dict[str, list[float]]]:
    """The round-trip error of each case (which also warms its inverse up), then interleaved timed
    draws of ``batch`` samples at T = 0.7."""
    errors = {c.name: c.roundtrip() for c in cases if c.roundtrip is not None}
    samplers = {c.name: c.sample for c in cases if c.sample is not None}
    return errors, time_interleaved(samplers, res.sample_repeats, synchronizer(device))


def run_resolution(res: Resolution, device: str, rosinality: str | None = None, seed: int = 0) -> list[dict]:
    """All measurements of one resolution, in this process; one row per (model, variant)."""
    start = time.perf_counter()
    cases, x = build_cases(res, device, rosinality, seed)
    print(f"[{res.name}] {len(cases)} cases built and initialised in {time.perf_counter() - start:.0f} s", flush=True)
    train = measure_training(cases, res, device)
    print(f"[{res.name}] training timed ({time.perf_counter() - start:.0f} s)", flush=True)
    rows, counted = [], set()
    for case in cases:
        memory, flops = measure_memory_and_flops(case, device, case.model not in counted)
        counted.add(case.model)
        rows.append(case_row(res, x.shape[-1], case, train[case.name], memory, flops))
    flops_of = {r["model"]: r["gflop_per_image"] for r in rows if r["gflop_per_image"] is not None}
    errors, samples = measure_roundtrip_and_sampling(cases, res, device)
    for case, row in zip(cases, rows):
        row["gflop_per_image"] = flops_of.get(case.model)
        row["roundtrip_max_err"] = errors.get(case.name)
        row["adamw_steps"] = case.trainable.steps
        if case.name in samples:
            row["sample_img_s"] = res.batch / median(samples[case.name])
    print(f"[{res.name}] done in {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def case_row(
    res: Resolution, image_size: int, case: Case, times: list[float], memory: StepMemory, flops: int | None
) -> dict:
    """The measured numbers of one case (ratios are added by :func:`add_ratios`)."""
    step_s = median(times)
    return {
        "resolution": res.name,
        "image_size": image_size,
        "depth": res.depth,
        "batch": res.batch,
        "model": case.model,
        "variant": case.variant.name,
        "params": sum(p.numel() for p in case.trainable.net.parameters()),
        "gflop_per_image": None if flops is None else flops / res.batch / 1e9,
        "train_img_s": res.batch / step_s,
        "train_step_s": step_s,
        "train_step_times_s": times,
        "step_mem_mib": None if memory.bytes is None else memory.bytes / MIB,
        "state_mib": case.trainable.state_bytes() / MIB,
        "memory_method": memory.method,
        "sample_img_s": None,
        "roundtrip_max_err": None,
    }


def add_ratios(rows: list[dict]) -> list[dict]:
    """Per resolution: training speed and FLOPs against stock Glow's ``cpu`` row, and each
    variant's speed against the same model's ``cpu`` and ``reference`` rows. Speed ratios pair the
    steps of each round (:func:`benchmarks._common.paired_ratio`)."""
    cpu_rows = {(r["resolution"], r["model"]): r for r in rows if r.get("variant") == "cpu"}
    reference_rows = {(r["resolution"], r["model"]): r for r in rows if r.get("variant") == "reference"}
    for row in rows:
        if "error" in row:
            continue
        glow = cpu_rows.get((row["resolution"], "glow"))
        own = cpu_rows.get((row["resolution"], row["model"]))
        times = row["train_step_times_s"]
        row["vs_glow"] = paired_ratio(glow["train_step_times_s"], times) if glow else None
        row["vs_own_cpu"] = paired_ratio(own["train_step_times_s"], times) if own else None
        ref = reference_rows.get((row["resolution"], row["model"]))
        row["vs_reference"] = paired_ratio(ref["train_step_times_s"], times) if ref else None
        has_flops = glow and glow["gflop_per_image"] and row["gflop_per_image"]
        row["flops_vs_glow"] = row["gflop_per_image"] / glow["gflop_per_image"] if has_flops else None
    return rows


# -- worker processes -----------------------------------------------------------------------------


def run_isolated(res: Resolution, device: str, rosinality: str | None, threads: int | None) -> list[dict]:
    """:func:`run_resolution` in a fresh Python process (its own memory peak, no state carried
    over); its progress lines pass through. A failure becomes one row with an ``error``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.bench_models",
            "--worker",
            json.dumps(dataclasses.asdict(res)),
            "--device",
            device,
            "--rows-out",
            str(out),
        ]
        if rosinality:
            cmd += ["--rosinality", rosinality]
        if threads:
            cmd += ["--threads", str(threads)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        proc = subprocess.run(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
            reason = "killed (out of memory?)" if proc.returncode < 0 else lines[-1]
            print(f"[{res.name}] FAILED: {reason}", flush=True)
            return [{"resolution": res.name, "error": reason}]
        return json.loads(out.read_text())


def main(
    quick: bool = False,
    device: str | None = None,
    rosinality: str | None = None,
    threads: int | None = None,
    plan: tuple[Resolution, ...] | None = None,
) -> list[dict]:
    """Run every resolution of ``plan`` (default: :func:`default_plan`) in its own process and
    return the rows with their ratios."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for res in plan or default_plan(device, quick):
        rows += run_isolated(res, device, rosinality, threads)
    return add_ratios(rows)


def _worker(args: argparse.Namespace) -> None:
    spec = json.loads(args.worker)
    res = Resolution(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run_resolution(res, args.device, args.rosinality)
    Path(args.rows_out).write_text(json.dumps(rows))


def _parse_worker_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="worker process of benchmarks.bench_models")
    parser.add_argument("--worker", required=True, help="the Resolution, as JSON")
    parser.add_argument("--device", required=True)
    parser.add_argument("--rows-out", required=True)
    parser.add_argument("--rosinality", default=None)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


if __name__ == "__main__":
    _worker(_parse_worker_args())
