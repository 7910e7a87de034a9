"""The ``fastflow`` command line: train, eval, sample, switch, interpolate, reconstruct, probe, demo.

Every command but ``train`` and ``demo`` works from a run folder alone (``config.json`` beside
``checkpoint.pt`` / ``best.pt``) and prints where it wrote its outputs. Multi-process training:
``torchrun --nproc_per_node N -m fastflow.cli train ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastflow.data import DATASET_NAMES, DEFAULT_DATASET
from fastflow.errors import UsageError
from fastflow.flows.debug import NonFiniteError
from fastflow.train.checkpoint import CheckpointError
from fastflow.train.distributed import MainRankFailed
from fastflow.train.stop import TrainingStopped

# What a command reports in one line (exit 2): bad input (UsageError, which includes config and data
# errors), a missing, corrupt or unwritable checkpoint, a model whose inverse overflows (NonFiniteError,
# e.g. sampling a diverged model), the operating system's refusals (a missing data folder, a full
# disk, a folder without permission), and on the other ranks of a run, rank 0's failure to write the
# run folder (MainRankFailed). Anything else is a bug in fastflow and keeps its traceback.
EXPECTED_ERRORS = (UsageError, CheckpointError, MainRankFailed, NonFiniteError, OSError)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``fastflow train: error: ...``, exit 2), like the commands' own."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _key_value(text: str) -> tuple[str, Any]:
    """``key=value`` with ``value`` parsed as JSON when it is JSON, else kept as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def set_threads(requested: str) -> None:
    """Apply ``--threads``: a number, or "auto" (the cores the 1-minute load average leaves idle, at
    least 1: on a busy machine, more threads than free cores make PyTorch's CPU kernels far slower)."""
    import torch

    if requested == "auto":
        cores = os.cpu_count() or 1
        threads = max(1, min(torch.get_num_threads(), cores - int(os.getloadavg()[0] + 0.5)))
    else:
        try:
            threads = int(requested)
        except ValueError:
            raise UsageError(f"--threads must be a number or 'auto', got {requested!r}") from None
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(args.set or [])
    for flag, key in (
        ("dataset", "dataset"),
        ("data", "data_path"),
        ("steps", "steps"),
        ("epochs", "epochs"),
        ("batch_size", "batch_size"),
        ("batch_steps", "batch_steps"),
        ("lr", "lr"),
        ("seed", "seed"),
        ("compile", "compile"),
    ):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    return overrides


def cmd_train(args: argparse.Namespace) -> None:
    from fastflow.runfiles import RunFiles
    from fastflow.train.config import load_run_config
    from fastflow.train.loop import train

    out = Path(args.out) if args.out else Path("runs") / Path(args.config or "demo_wolf").stem
    files = RunFiles(out)
    if args.resume and not args.config:
        if not files.config.is_file():
            raise CheckpointError(f"--resume: {files.config} does not exist; is {out} a run folder?")
        source: str | Path = files.config
    else:
        source = args.config or "demo_wolf"
    model_config, train_config = load_run_config(source, _train_overrides(args))
    if args.threads:
        set_threads(args.threads)
    summary = train(
        model_config,
        train_config,
        out,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        max_seconds=args.time_limit,
        checkpoint=args.checkpoint,
        overwrite=args.overwrite,
    )
    if summary["rank"] == 0:
        print(
            f"trained {model_config.kind} to step {summary['step']} of {summary['total_steps']}: "
            f"valid bits/dim {summary['valid_bpd']:.4f} "
            f"(best {summary['best_valid_bpd']:.4f}, {summary['skipped_steps']} non-finite steps skipped)"
        )
        print(
            f"wrote {files.checkpoint}, {files.best}, {files.config}, {files.metrics}, {files.plot}, {files.samples}/"
        )


def _load(args: argparse.Namespace):
    from fastflow.inference.rundir import load_run

    return load_run(args.run, args.checkpoint, args.device)


def cmd_eval(args: argparse.Namespace) -> None:
    from fastflow.inference import commands

    r = commands.evaluate(
        _load(args),
        args.split,
        args.k,
        args.limit,
        args.batch_size,
        args.data,
        args.seed,
        Path(args.out) if args.out else None,
    )
    print(
        f"{r['split']}: {r['bpd']:.4f} bits/dim (KL part {r['kl_bpd']:.4f}) on {r['images']} images, "
        f"k={r['k']}, step {r['step']}"
    )
    print(f"wrote {r['path']}")


def cmd_sample(args: argparse.Namespace) -> None:
    from fastflow.inference import commands

    r = commands.sample(_load(args), args.temperature, args.n, args.seed, Path(args.out) if args.out else None)
    for t, path in zip(r["temperatures"], r["paths"]):
        print(f"wrote {r['n']} samples at temperature {t:g} to {path}")


def cmd_switch(args: argparse.Namespace) -> None:
    from fastflow.inference import commands

    r = commands.switch(_load(args), args.pairs, args.split, args.seed, args.data, Path(args.out) if args.out else None)
    print(f"wrote {r['pairs']} switched pairs (x0 | x1 | decode(z1, v0) | decode(z0, v1) per row) to {r['path']}")


def cmd_interpolate(args: argparse.Namespace) -> None:
    from fastflow.inference import commands

    r = commands.interpolate(
        _load(args),
        args.pairs,
        args.alphas,
        args.betas,
        args.split,
        args.seed,
        args.data,
        Path(args.out) if args.out else None,
    )
    for path in r["paths"]:
        print(f"wrote a {len(r['alphas'])}x{len(r['betas'])} interpolation grid (rows: z, columns: v) to {path}")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from fastflow.inference import commands

    r = commands.reconstruct(
        _load(args), args.n, args.split, args.seed, args.data, Path(args.out) if args.out else None
    )
    print(f"largest pixel error of decode(encode(x)) over {r['n']} images: {r['max_pixel_error']}")
    print(f"wrote originals (top) and reconstructions (bottom) to {r['path']}")


def cmd_probe(args: argparse.Namespace) -> None:
    from fastflow.analysis.probe import format_probe
    from fastflow.inference import commands

    r = commands.probe(
        _load(args), args.max_train, args.max_test, args.C, args.data, Path(args.out) if args.out else None
    )
    print(format_probe(r))
    print(f"wrote {r['path']}")


def cmd_demo(args: argparse.Namespace) -> None:
    from fastflow.demo import format_summary, run_demo

    set_threads(args.threads)
    limits = {"steps": args.steps} | ({"seconds": args.seconds} if args.seconds is not None else {})
    summary = run_demo(args.out, args.config, device=args.device, progress=not args.no_progress, **limits)
    print(format_summary(summary))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fastflow", description="Train, evaluate and explore Wolf, refined Glow and Glow models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train (or --resume) a model; torchrun-aware")
    p.add_argument(
        "--config",
        help="bundled config name (e.g. cifar10_wolf, tiny_wolf) or JSON path "
        "(default demo_wolf; with --resume, the run's config.json)",
    )
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument("--data", help="data folder (sets train.data_path)")
    p.add_argument("--dataset", choices=DATASET_NAMES, help=f"data set (sets train.dataset; default {DEFAULT_DATASET})")
    p.add_argument("--steps", type=int, help="optimiser updates (sets train.steps)")
    p.add_argument("--epochs", type=int, help="epochs when steps is 0 (sets train.epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size (sets train.batch_size)")
    p.add_argument("--batch-steps", type=int, help="micro-batches per step (sets train.batch_steps)")
    p.add_argument("--lr", type=float, help="peak learning rate (sets train.lr)")
    p.add_argument("--seed", type=int, help="sets train.seed")
    p.add_argument(
        "--compile",
        choices=("off", "default", "max-autotune"),
        help="compile the model's repeated blocks with torch.compile in this mode (sets train.compile)",
    )
    p.add_argument(
        "--set",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="any train-config key, value as JSON (repeatable), e.g. --set valid_interval=500",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument(
        "--checkpoint",
        choices=("checkpoint", "best"),
        default="checkpoint",
        help="with --resume: continue from checkpoint.pt (the latest, default) or best.pt",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out folder that holds a run, deleting its checkpoints, metrics and samples",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="stop (validate and checkpoint) after this much wall time; --resume continues",
    )
    p.add_argument("--threads", help="CPU threads: a number or 'auto' (default: PyTorch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_train)

    def run_command(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_text)
        q.add_argument("run", help="run folder written by `fastflow train` (holds config.json and checkpoint.pt)")
        q.add_argument(
            "--checkpoint",
            choices=("checkpoint", "best"),
            default="checkpoint",
            help="latest checkpoint.pt (default) or best.pt (best validation bits/dim)",
        )
        q.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
        q.add_argument("--seed", type=int, default=0, help="seed of the noise / image choice (default 0)")
        q.set_defaults(handler=handler)
        return q

    def data_args(q: argparse.ArgumentParser, split: bool = True) -> None:
        q.add_argument("--data", help="data folder, if not where the run found it")
        if split:
            q.add_argument("--split", choices=("train", "valid"), default="valid")

    q = run_command("eval", "bits/dim on a split (k samples per image)", cmd_eval)
    data_args(q)
    q.add_argument("--k", type=int, default=5, help="samples of noise and z per image (paper: 5)")
    q.add_argument("--limit", type=int, default=0, help="evaluate on a fixed random subset of N images")
    q.add_argument("--batch-size", type=int, default=0, help="default: the run's eval_batch_size")
    q.add_argument("--out", help="JSON file (default RUN/eval_<split>.json)")

    q = run_command("sample", "sample grids at one or more temperatures", cmd_sample)
    q.add_argument("--temperature", type=float, nargs="+", default=[0.7, 1.0], help="T >= 0: v ~ N(0, T^2 I)")
    q.add_argument("--n", type=int, default=64, help="samples per grid")
    q.add_argument("--out", help="folder (default RUN/samples)")

    q = run_command("switch", "swap z and v between pairs of images", cmd_switch)
    data_args(q)
    q.add_argument("--pairs", type=int, default=8)
    q.add_argument("--out", help="PNG file (default RUN/switch.png)")

    q = run_command("interpolate", "2-D interpolation grid over z (rows) and v (columns)", cmd_interpolate)
    data_args(q)
    q.add_argument("--pairs", type=int, default=1, help="one grid per pair")
    q.add_argument("--alphas", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="z weights, e.g. 0,0.5,1")
    q.add_argument("--betas", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="v weights, e.g. 0,0.5,1")
    q.add_argument("--out", help="folder (default RUN)")

    q = run_command("reconstruct", "decode(encode(x)) next to x", cmd_reconstruct)
    data_args(q)
    q.add_argument("--n", type=int, default=16)
    q.add_argument("--out", help="PNG file (default RUN/reconstruct.png)")

    q = run_command("probe", "linear SVM on z, v and raw pixels (paper Table 4)", cmd_probe)
    data_args(q, split=False)
    q.add_argument("--max-train", type=int, default=0, help="use a fixed random subset of N training images (0: all)")
    q.add_argument("--max-test", type=int, default=0, help="use a fixed random subset of N validation images (0: all)")
    q.add_argument("--C", type=float, default=1.0, help="SVM regularisation")
    q.add_argument("--out", help="JSON file (default RUN/probe.json)")

    p = sub.add_parser("demo", help="train a small Wolf on the embedded photos (CPU, minutes) and run everything")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out; DIR/run is replaced)")
    p.add_argument("--config", default="demo_wolf", help="model config (default demo_wolf)")
    p.add_argument("--steps", type=int, help="at most this many training steps (default 2000)")
    p.add_argument("--seconds", type=float, help="at most this much training time (default 150)")
    p.add_argument("--threads", default="auto", help="CPU threads: a number or 'auto' (default: the idle cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0; 2 with a one-line error for bad input; 128 + the
    signal number for a training run stopped by SIGTERM or SIGINT, with one line on how to resume)."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except TrainingStopped as stopped:  # SIGTERM or SIGINT: checkpoint.pt written at a step boundary
        if stopped.rank == 0:
            print(f"fastflow {args.command}: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except EXPECTED_ERRORS as err:
        print(f"fastflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
