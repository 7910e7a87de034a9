"""The training loop: AdamW with warmup + exponential decay, gradient accumulation, non-finite steps
skipped, periodic validation and sample grids, atomic checkpoints, exact resume, and DDP.

Determinism: the data order is a function of (seed, epoch), each augmentation of (seed, epoch, index)
and the dequantisation / z noise of (seed, rank, step), so a run resumed from the checkpoint of step
k reaches the same parameters as one that never stopped. The global random states are saved and
restored too, for anything outside the loop that draws from them.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fastflow.analysis.visualize import sample_grid
from fastflow.config import ConfigError, ModelConfig
from fastflow.data import Augmented, EpochBatchSampler, build_datasets, dataset_spec
from fastflow.errors import UsageError
from fastflow.models import build_model
from fastflow.runfiles import RunFiles
from fastflow.schema import POSITIVE, check
from fastflow.seeding import INIT_STREAM, SAMPLE_STREAM, TRAIN_STREAM, mix_seed
from fastflow.train import distributed as D
from fastflow.train.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    load_model_state,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fastflow.train.compile import compile_regions
from fastflow.train.config import TrainConfig, run_config_dict
from fastflow.train.evaluate import evaluate_bpd
from fastflow.train.metrics import MetricsLog, plot_bpd
from fastflow.train.optimizer import adamw
from fastflow.train.schedule import warmup_exponential
from fastflow.train.stop import StopOnSignal, ignore_stop_signals


class LossModule(nn.Module):
    """What DDP wraps: the model's training loss with explicit noise. Returns (loss, mean KL in nats)."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.loss(x, num_samples=self.k, generator=generator)
        return out["loss"], out["kl"].mean()


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """``steps``, or ``epochs`` x steps per epoch when ``steps`` is 0."""
    total = config.steps or config.epochs * steps_per_epoch
    if total <= 0:
        raise ConfigError("set train.steps or train.epochs to a positive number")
    return total


def init_batch(dataset: Dataset, size: int, seed: int) -> torch.Tensor:
    """A random batch of ``size`` training images (fewer if the set is smaller): uint8 ``[b, 3, H, W]``."""
    generator = torch.Generator().manual_seed(mix_seed(seed, INIT_STREAM))
    indices = torch.randperm(len(dataset), generator=generator)[:size].tolist()
    return torch.stack([dataset[i][0] for i in indices])


RESUME_FROM = ("checkpoint", "best")


def check_run_folder(files: RunFiles, resume: bool, checkpoint: str, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (None for a new run), or an error if the folder does not allow it:
    resuming needs that checkpoint; a new run needs a folder without one (or ``overwrite``)."""
    if checkpoint not in RESUME_FROM:
        raise UsageError(f"checkpoint must be one of {RESUME_FROM}, got {checkpoint!r}")
    if resume and overwrite:
        raise UsageError("--resume continues the run in the folder and --overwrite starts it over: pass one")
    if not resume:
        if checkpoint != "checkpoint":
            raise UsageError(f"--checkpoint {checkpoint} picks the checkpoint to resume from: add --resume")
        marks = files.run_marks()
        if marks and not overwrite:
            raise CheckpointError(
                f"{files.root} already holds a run ({', '.join(p.name for p in marks)}); pass --resume to "
                f"continue it, --overwrite to start it over (deleting its checkpoints, metrics and samples), "
                f"or choose another output folder"
            )
        return None
    path = files.best if checkpoint == "best" else files.checkpoint
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path} to resume from{_best_hint(files, checkpoint)}")
    return path


def _best_hint(files: RunFiles, checkpoint: str) -> str:
    """Where the latest checkpoint is missing or unreadable: how to resume from ``best.pt`` instead."""
    if checkpoint == "best" or not files.best.is_file():
        return ""
    return f"; {files.best} is there: `--resume --checkpoint best` continues from it (redoing the later steps)"


class Trainer:
    """One training run in ``out_dir``; :meth:`run` trains to the configured number of steps.

    ``resume`` continues from ``<checkpoint>.pt`` ("checkpoint", the latest, or "best"); a new run
    refuses a folder that holds one unless ``overwrite``, which deletes the old run's training outputs
    once the new run is set up. Nothing is written to ``out_dir`` before the setup has succeeded,
    except that stale temporary files of killed writers are removed first.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        out_dir: str | Path,
        ctx: D.Context,
        resume: bool = False,
        progress: bool = True,
        checkpoint: str = "checkpoint",
        overwrite: bool = False,
    ) -> None:
        self.model_config, self.config, self.ctx = model_config, config, ctx
        self.files = RunFiles(Path(out_dir))
        self.progress = progress
        source = check_run_folder(self.files, resume, checkpoint, overwrite)
        if self.ctx.is_main:
            remove_stale_temporaries(self.files.root)

        train_set, self.valid_set = build_datasets(config.dataset, config.data_path, model_config.image_size)
        augment = dataset_spec(config.dataset).augmentation if config.augment else None
        self.train_set = Augmented(train_set, augment, config.seed) if augment else train_set
        self.sampler = EpochBatchSampler(
            len(train_set), config.batch_size, config.seed, self.ctx.rank, self.ctx.world_size
        )
        local_batch = config.batch_size // self.ctx.world_size
        if local_batch % config.batch_steps:
            raise ConfigError(
                f"the per-process batch {local_batch} must be divisible by train.batch_steps {config.batch_steps}"
            )
        self.total = total_steps(config, self.sampler.steps_per_epoch)

        torch.manual_seed(config.seed)
        self.model = build_model(model_config).to(self.ctx.device)
        self.optimizer = adamw(
            self.model.parameters(),
            lr=config.lr,
            betas=tuple(config.betas),
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
        self.scheduler = warmup_exponential(self.optimizer, config.lr, config.warmup_steps, config.lr_decay)
        self.metrics = MetricsLog(self.files.metrics)
        self.step, self.skipped, self.best = 0, 0, math.inf
        self.pending_skips = torch.zeros((), device=self.ctx.device)  # skipped steps not yet in `skipped`
        if source is not None:
            self._restore(source, checkpoint)
        else:
            self._initialize(train_set)
        if self.ctx.is_main:
            if source is None:
                self.files.clear()  # only reached with overwrite if the folder held a run
            self.files.root.mkdir(parents=True, exist_ok=True)
            atomic_write(
                self.files.config, (json.dumps(run_config_dict(model_config, config), indent=2) + "\n").encode()
            )
        compile_regions(self.model, config.compile)
        self.wrapped = D.wrap(LossModule(self.model, config.train_k), self.ctx)

    # -- setup -----------------------------------------------------------------------------------
    def _initialize(self, train_set: Dataset) -> None:
        """Data-dependent init on rank 0, then every rank takes rank 0's parameters and buffers."""
        if self.ctx.is_main:
            x = init_batch(train_set, self.config.init_batch_size, self.config.seed).to(self.ctx.device)
            generator = torch.Generator(device=self.ctx.device).manual_seed(mix_seed(self.config.seed, INIT_STREAM))
            self.model.initialize(x, generator=generator)
        D.broadcast_module(self.model, self.ctx)

    def _restore(self, path: Path, checkpoint: str) -> None:
        try:
            state = load_checkpoint(path, map_location=self.ctx.device)
        except CheckpointError as err:
            raise CheckpointError(f"{err}{_best_hint(self.files, checkpoint)}") from None
        load_model_state(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.skipped, self.best = state["step"], state["skipped_steps"], state["best_valid_bpd"]
        set_rng_state(state["rng"])
        if self.ctx.is_main:
            self.metrics.truncate(self.step)

    def _state(self) -> dict[str, Any]:
        return {
            "kind": self.model.kind,
            "config": run_config_dict(self.model_config, self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "skipped_steps": self.skipped,
            "best_valid_bpd": self.best,
            "world_size": self.ctx.world_size,
            "rng": rng_state(),
        }

    # -- one step ----------------------------------------------------------------------------------
    def _train_step(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser update on this rank's batch, split into micro-batches, without a host sync.

        Returns (mean bits/dim, mean KL in nats, gradient norm) as 0-d tensors on the device. When the
        gradient norm is not finite the update is skipped on the device (the fused AdamW's
        ``found_inf``, as ``GradScaler`` uses it) and counted in :attr:`pending_skips`, which
        :meth:`read_step_counts` adds to ``skipped``. The learning-rate schedule advances every step
        and is wound back by the skipped steps when they are read (at the next log interval or
        checkpoint), so it counts applied updates from then on.
        """
        self.model.train()
        generator = torch.Generator(device=self.ctx.device).manual_seed(
            mix_seed(self.config.seed, self.ctx.rank, self.step, TRAIN_STREAM)
        )
        chunks = images.to(self.ctx.device).chunk(self.config.batch_steps)
        bpd = kl = torch.zeros((), device=self.ctx.device)
        self.optimizer.zero_grad(set_to_none=True)
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last or not self.ctx.distributed else self.wrapped.no_sync()
            with sync:
                loss, kl_mean = self.wrapped(chunk, generator)
                weight = chunk.shape[0] / images.shape[0]
                (loss * weight).backward()
            bpd = bpd + loss.detach() * weight
            kl = kl + kl_mean.detach() * weight
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).to(self.ctx.device)
        found_inf = (~torch.isfinite(norm)).to(torch.float32)
        if self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = found_inf
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif not found_inf:  # torch's unfused AdamW has no found_inf: one host sync
            self.optimizer.step()
        self.scheduler.step()
        self.pending_skips = self.pending_skips + found_inf
        return bpd, kl, norm

    def read_step_counts(self) -> None:
        """Add the skipped steps counted on the device to ``skipped`` (one host sync) and wind the
        learning-rate schedule back by them (it advanced on every step)."""
        skipped = int(self.pending_skips)
        self.pending_skips = torch.zeros((), device=self.ctx.device)
        if skipped:
            self.skipped += skipped
            self.scheduler.last_epoch -= skipped
            s = self.scheduler
            lrs = [base * rule(s.last_epoch) for rule, base in zip(s.lr_lambdas, s.base_lrs)]
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            self.scheduler._last_lr = lrs

    # -- periodic work -------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation bits/dim (``eval_k`` samples), sample grids, and ``best.pt`` when it improves."""
        c = self.config
        D.broadcast_module(self.model, self.ctx, parameters=False)
        result = evaluate_bpd(
            self.model, self.valid_set, c.eval_batch_size, c.eval_k, c.seed, self.ctx, c.valid_limit, c.workers
        )

        def write_outputs() -> None:
            self.metrics.write({"split": "valid", "step": self.step, **result})
            self.model.eval()
            for t in c.sample_temperatures:
                sample_grid(
                    self.model,
                    c.num_samples,
                    t,
                    self.files.samples / f"step{self.step:07d}_t{t:g}.png",
                    seed=mix_seed(c.seed, SAMPLE_STREAM),
                    nonfinite="warn",  # a diverging model's samples are worth seeing; training goes on
                )
            self.model.train()
            plot_bpd(self.metrics.read(), self.files.plot, title=f"{self.model.kind} on {c.dataset}")

        D.on_main(self.ctx, write_outputs, "write the validation metrics and samples")
        if result["bpd"] < self.best:
            self.best = result["bpd"]
            self.read_step_counts()  # on every rank, before rank 0 writes the state
            D.on_main(self.ctx, lambda: save_checkpoint(self.files.best, self._state()), "write best.pt")
        return result

    def save(self) -> None:
        """``checkpoint.pt`` (rank 0 writes it; every rank stops if that fails)."""
        self.read_step_counts()
        D.on_main(self.ctx, lambda: save_checkpoint(self.files.checkpoint, self._state()), "write checkpoint.pt")

    # -- the loop ----------------------------------------------------------------------------------
    def _epoch_loader(self) -> tuple[int, DataLoader]:
        """(epoch, loader over the rest of it) for the current step."""
        epoch, start = divmod(self.step, self.sampler.steps_per_epoch)
        self.sampler.set_position(epoch, start)
        if isinstance(self.train_set, Augmented):
            self.train_set.set_epoch(epoch)
        return epoch, DataLoader(
            self.train_set,
            batch_sampler=self.sampler,
            num_workers=self.config.workers,
            pin_memory=self.ctx.device.type == "cuda",
            worker_init_fn=ignore_stop_signals,
        )

    def _out_of_time(self, deadline: float | None) -> bool:
        """Whether the wall-clock deadline has passed, agreed over ranks (any rank past it stops all)."""
        if deadline is None:
            return False
        late = torch.tensor([float(time.time() > deadline)], device=self.ctx.device)
        return bool(D.all_reduce_sum(late, self.ctx).item() > 0)

    def run(self, on_step: Callable[[int], None] | None = None, max_seconds: float | None = None) -> dict[str, Any]:
        """Train from the current step to the total, or until ``max_seconds`` have passed (the run then
        ends at that step: validation, checkpoint; ``--resume`` continues it). ``on_step(step)`` is
        called after every update and its checkpoint. Returns a summary with the last validation."""
        c, ctx = self.config, self.ctx
        started = time.time()
        deadline = started + max_seconds if max_seconds is not None else None
        last_valid = self.validate() if self.step == 0 and c.valid_interval > 0 else None
        bar = tqdm(
            total=self.total,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (ctx.is_main and self.progress),
        )
        window = Window()
        stop = self.step >= self.total
        while not stop:
            epoch, loader = self._epoch_loader()
            for images, _ in loader:
                window.add(*self._train_step(images), images.shape[0] * ctx.world_size)
                self.step += 1
                stop = self.step >= self.total or self._out_of_time(deadline)
                if stop or self.step % c.log_interval == 0:
                    self.model.read_device_checks()
                    self.read_step_counts()
                    record = {
                        "split": "train",
                        "step": self.step,
                        "epoch": epoch,
                        **window.flush(self.model.num_dims),
                        "lr": self.scheduler.get_last_lr()[0],
                        "skipped_steps": self.skipped,
                    }
                    if ctx.is_main:
                        self.metrics.write(record)
                    bar.set_postfix(bpd=f"{record['bpd']:.3f}", img_s=f"{record['images_per_s']:.1f}", refresh=False)
                bar.update(1)
                with window.paused():
                    if stop or (c.valid_interval and self.step % c.valid_interval == 0):
                        last_valid = self.validate()
                    if stop or (c.checkpoint_interval and self.step % c.checkpoint_interval == 0):
                        self.save()
                if on_step is not None:
                    on_step(self.step)
                if stop:
                    break
        bar.close()
        if last_valid is None:  # resumed a finished run (maybe from best.pt: checkpoint.pt is rewritten)
            last_valid = self.validate()
            self.save()
        if ctx.is_main:
            plot_bpd(self.metrics.read(), self.files.plot, title=f"{self.model.kind} on {c.dataset}")
        return {
            "step": self.step,
            "total_steps": self.total,
            "valid_bpd": last_valid["bpd"],
            "valid_kl_bpd": last_valid["kl_bpd"],
            "best_valid_bpd": self.best,
            "skipped_steps": self.skipped,
            "wall_s": time.time() - started,
            "run_dir": str(self.files.root),
            "rank": ctx.rank,
        }


class Window:
    """Running means of the training numbers between two log records, and the training-time rate.

    The sums stay on the device (no host sync per step) until :meth:`flush` reads them."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sums: torch.Tensor | None = None
        self.steps, self.images, self.start = 0, 0, time.time()

    def add(self, bpd: torch.Tensor, kl: torch.Tensor, norm: torch.Tensor, images: int) -> None:
        """Add one step's 0-d device tensors (a non-finite norm counts as 0)."""
        norm = torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))
        values = torch.stack([bpd.double(), kl.double(), norm.double()])
        self.sums = values if self.sums is None else self.sums + values
        self.steps += 1
        self.images += images

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (validation, checkpoints) does not count towards images/s."""
        t = time.time()
        yield
        self.start += time.time() - t

    def flush(self, num_dims: int) -> dict[str, float]:
        """The means since the last flush (bits/dim, KL in bits/dim, grad norm, images/s); then reset."""
        n = max(self.steps, 1)
        bpd, kl, norm = self.sums.tolist() if self.sums is not None else (0.0, 0.0, 0.0)
        out = {
            "bpd": bpd / n,
            "kl_bpd": kl / n / (num_dims * math.log(2)),
            "grad_norm": norm / n,
            "images_per_s": self.images / max(time.time() - self.start, 1e-9),
        }
        self._reset()
        return out


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    max_seconds: float | None = None,
    checkpoint: str = "checkpoint",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (or resume from ``<checkpoint>.pt``) a run in ``out_dir``, joining the torchrun process
    group if there is one; returns the summary of :meth:`Trainer.run`. See :class:`Trainer` for
    ``overwrite``; ``max_seconds`` (> 0) limits the wall time. SIGTERM or SIGINT stops the run at the
    next step boundary with ``checkpoint.pt`` written (:class:`fastflow.train.stop.TrainingStopped`)."""
    if max_seconds is not None:
        check("max_seconds (--time-limit)", max_seconds, float, POSITIVE)
    ctx = D.setup(device)
    try:
        trainer = Trainer(model_config, config, out_dir, ctx, resume, progress, checkpoint, overwrite)
        with StopOnSignal(ctx, trainer.save, trainer.files.checkpoint) as stopper:

            def at_step(step: int) -> None:
                if on_step is not None:
                    on_step(step)
                if step < trainer.total:  # a signal during the last step: the run ends as planned
                    stopper.at_step_boundary(step)

            summary = trainer.run(at_step, max_seconds)
    except BaseException:
        D.teardown(ctx, synchronize=False)
        raise
    D.teardown(ctx)
    return summary
