"""Every expected failure of the command line is one line on stderr, exit code 2, and nothing half-written:
bad configs, bad arguments, no CUDA, undecodable data, a full disk, non-finite values,
leftovers of killed runs, overwrites. The Python API raises the same errors (UsageError is a ValueError)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastflow.cli import main
from fastflow.errors import DataError, UsageError
from fastflow.flows.debug import NonFiniteError
from fastflow.models import build_model
from fastflow.train import checkpoint as ckpt
from fastflow.train.checkpoint import CheckpointError, load_checkpoint
from fastflow.train.metrics import MetricsLog

QUICK = ["--set", "valid_limit=16", "--set", "eval_k=1", "--set", "num_samples=4", "--set", "sample_temperatures=[1]"]
QUICK += ["--batch-size", "16", "--no-progress"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (hidden ones too) with its size and modification time."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def fails(argv: list[str], capsys, message: str) -> str:
    """Run the CLI; assert exit code 2 and exactly one stderr line that contains ``message``."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err, err
    return err.strip()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-step tiny Wolf run (validation at steps 0, 1, 2: best.pt and checkpoint.pt)."""
    out = tmp_path_factory.mktemp("bad_input") / "run"
    argv = ["train", "--config", "tiny_wolf", "--out", str(out), "--steps", "2", "--set", "valid_interval=1", *QUICK]
    assert main(argv) == 0
    return out


@pytest.fixture
def run_copy(run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


# -- 1. typed configs through the command line -------------------------------------------------------
@pytest.mark.parametrize(
    "setting, message",
    [
        ("batch_size=true", "train.batch_size must be an integer, got true (a boolean)"),
        ("lr=abc", 'train.lr must be a finite number, got "abc" (a string)'),
        ("steps=2.5", "train.steps must be an integer, got 2.5 (a number)"),
        ("lr=NaN", "train.lr must be a finite number, got NaN"),
        ("grad_clip=-1", "train.grad_clip must be >= 0, got -1.0"),
    ],
)
def test_set_with_a_wrong_value_names_key_value_and_type(tmp_path, capsys, setting, message):
    out = tmp_path / "r"
    fails(["train", "--config", "tiny_wolf", "--out", str(out), "--set", setting], capsys, message)
    assert not out.exists()


def test_config_file_with_wrong_types_is_refused_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "bad.json"
    for key, value, message in [
        ("image_size", "16", 'model.image_size must be an integer, got "16" (a string)'),
        ("z_dim", 8.0, "model.z_dim must be an integer, got 8.0 (a number)"),
    ]:
        block = json.loads((Path(__file__).parents[1] / "configs" / "tiny_wolf.json").read_text())
        block["model"][key] = value
        path.write_text(json.dumps(block))
        fails(["train", "--config", str(path), "--out", str(tmp_path / "r")], capsys, message)
        assert not (tmp_path / "r").exists()


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--steps", "2.5"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "fastflow train: error: argument --steps: invalid int value: '2.5'" in err


# -- 2. expected failures of the run commands ---------------------------------------------------------
@pytest.mark.parametrize("command", ["sample", "switch", "interpolate", "reconstruct"])
def test_cuda_asked_for_without_cuda(run, capsys, monkeypatch, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = snapshot(run)
    fails([command, str(run), "--device", "cuda"], capsys, "device 'cuda' was asked for, but CUDA is not available")
    fails([command, str(run), "--device", "tpu9"], capsys, "unknown device 'tpu9'; expected auto, cpu, cuda")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["switch", "--pairs", "0"], "pairs must be >= 1, got 0"),
        (["switch", "--pairs", "-1"], "pairs must be >= 1, got -1"),
        (["interpolate", "--pairs", "0"], "pairs must be >= 1, got 0"),
        (["interpolate", "--alphas", "0,nan"], "alphas[1] must be a finite number, got NaN"),
        (["reconstruct", "--n", "0"], "n must be >= 1, got 0"),
        (["eval", "--limit", "-1"], "limit must be >= 0, got -1"),
        (["eval", "--k", "0"], "k must be >= 1, got 0"),
        (["probe", "--max-train", "-1"], "max_train must be >= 0, got -1"),
        (["probe", "--max-test", "-3"], "max_test must be >= 0, got -3"),
        (["sample", "--temperature", "0.7", "inf"], "temperature must be a finite number, got Infinity"),
        (["sample", "--temperature", "nan"], "temperature must be a finite number, got NaN"),
        (["sample", "--n", "0"], "n must be >= 1, got 0"),
        (["sample", "--seed", "-1"], "seed must be >= 0, got -1"),
        (["switch", "--pairs", "100000"], "asked for 200000 images, but the split has only"),
    ],
)
def test_bad_arguments_of_run_commands(run, capsys, argv, message):
    before = snapshot(run)
    err = fails([argv[0], str(run), *argv[1:]], capsys, message)
    assert err.startswith(f"fastflow {argv[0]}: error: ")
    assert snapshot(run) == before  # not even the first of two sample grids


def test_data_folder_where_no_image_decodes(tmp_path, capsys):
    data = tmp_path / "faces"
    data.mkdir()
    for i in range(12):
        path = data / f"{i:02d}.png"
        Image.fromarray(torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8).numpy()).save(path)
        path.write_bytes(path.read_bytes()[:100])  # a valid header, the pixels cut off
    out = tmp_path / "r"
    argv = ["train", "--config", "tiny_wolf", "--dataset", "celeba", "--data", str(data), "--out", str(out)]
    with pytest.warns(UserWarning, match="unreadable image"):
        fails(argv, capsys, "celeba: none of the 11 training image files under")
    assert not out.exists()


def test_full_disk_while_writing_a_checkpoint(run_copy, capsys, monkeypatch):
    old = (run_copy / "checkpoint.pt").read_bytes()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the disk fills up while the new checkpoint.pt is written
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    err = fails(
        ["train", "--out", str(run_copy), "--resume", "--steps", "3", "--no-progress"],
        capsys,
        f"could not write {run_copy / 'checkpoint.pt'}: No space left on device (",
    )
    assert "MiB needed); the previous checkpoint.pt is unchanged" in err and "--resume" in err
    assert (run_copy / "checkpoint.pt").read_bytes() == old
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]


def test_time_limit_must_be_positive_and_finite(tmp_path, capsys):
    for value, message in (("0", "must be > 0, got 0.0"), ("nan", "must be a finite number, got NaN")):
        out = tmp_path / "r"
        fails(["train", "--config", "tiny_wolf", "--out", str(out), "--time-limit", value], capsys, message)
        assert not out.exists()


def test_demo_and_thread_arguments_are_checked(tmp_path, capsys):
    out = tmp_path / "demo"
    fails(["demo", "--out", str(out), "--threads", "1", "--seconds", "0"], capsys, "seconds must be > 0, got 0.0")
    fails(["demo", "--out", str(out), "--threads", "1", "--steps", "-2"], capsys, "steps must be >= 1, got -2")
    fails(["demo", "--out", str(out), "--threads", "0"], capsys, "--threads must be >= 1, got 0")
    fails(["train", "--out", str(out), "--threads", "many"], capsys, "--threads must be a number or 'auto'")
    assert not out.exists()


def test_sampling_a_model_whose_inverse_overflows(run, capsys, monkeypatch):
    from fastflow.flows.refined import MultiScaleLevel

    real_inverse = MultiScaleLevel.inverse

    def overflowing(self, y, cond=None):
        x, logdet = real_inverse(self, y, cond)
        return x + float("inf"), logdet

    monkeypatch.setattr(MultiScaleLevel, "inverse", overflowing)
    before = snapshot(run)
    fails(["sample", str(run), "--n", "4"], capsys, "the inverse flow produced NaN or infinite values in 4 of 4 images")
    assert snapshot(run) == before


def test_internal_errors_keep_their_traceback(run, monkeypatch):
    from fastflow.inference import commands

    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(commands, "sample", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["sample", str(run)])


# -- 3. non-finite values and empty batches in the Python API --------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("tiny_wolf").eval()
    m.initialize(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8))
    return m


def test_sample_refuses_non_finite_temperatures(model):
    for temperature in (float("nan"), float("inf"), -0.1):
        with pytest.raises(UsageError, match="temperature must be"):
            model.sample(2, temperature=temperature)
    with pytest.raises(UsageError, match="n must be >= 1, got 0"):
        model.sample(0)


def test_decode_refuses_non_finite_v_or_warns_and_counts(model):
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    z, v = model.encode(x)
    v[1, 0, 0, 0] = float("nan")
    v[2, 1, 2, 3] = float("inf")
    with pytest.raises(UsageError, match="v or z holds NaN or infinite values in 2 of 3 images"):
        model.decode(z, v)
    with pytest.warns(UserWarning, match=r"2 of 3 decoded images hold NaN or infinite values \(2 of them from v or z"):
        images = model.decode(z, v, nonfinite="warn")
    assert torch.equal(images[0], model.decode(z[:1], v[:1])[0])  # the finite image is decoded as usual
    z[0, 0] = float("nan")
    with pytest.raises(UsageError, match="v or z holds NaN or infinite values in 3 of 3 images"):
        model.decode(z, v)


def test_decode_refuses_non_finite_output_of_the_flow(model, monkeypatch):
    z, v = model.encode(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    real_inverse = model.flow.inverse

    def overflowing(v, cond):
        x, logdet = real_inverse(v, cond)
        return x.index_fill(0, torch.tensor([1]), float("inf")), logdet

    monkeypatch.setattr(model.flow, "inverse", overflowing)
    with pytest.raises(NonFiniteError, match="inverse flow produced NaN or infinite values in 1 of 2 images"):
        model.decode(z, v)


def test_switch_and_interpolate_follow_the_nonfinite_policy(model, monkeypatch):
    """The demo asks for "warn": a short run's overflowing inverse must not stop it (the CLI raises)."""
    x0, x1 = torch.randint(0, 256, (2, 1, 3, 16, 16), dtype=torch.uint8)
    real_inverse = model.flow.inverse

    def overflowing(v, cond):
        x, logdet = real_inverse(v, cond)
        return x.index_fill(0, torch.tensor([0]), float("inf")), logdet

    monkeypatch.setattr(model.flow, "inverse", overflowing)
    with pytest.raises(NonFiniteError):
        model.switch(x0, x1)
    with pytest.raises(NonFiniteError):
        model.interpolate(x0, x1, alphas=[0.0, 1.0], betas=[0.0, 1.0])
    with pytest.warns(UserWarning, match="decoded images hold NaN or infinite values"):
        assert model.switch(x0, x1, nonfinite="warn").shape == (1, 2, 3, 16, 16)
    with pytest.warns(UserWarning, match="decoded images hold NaN or infinite values"):
        grid = model.interpolate(x0, x1, alphas=[0.0, 1.0], betas=[0.0, 1.0], nonfinite="warn")
    assert grid.shape == (2, 2, 3, 16, 16) and grid.dtype == torch.uint8


def test_empty_batch_is_a_clear_error(model):
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(UsageError, match=r"non-empty batch .* got \(0, 3, 16, 16\)"):
        model.loss(x[:0])
    with pytest.raises(UsageError, match="num_samples must be >= 1, got 0"):
        model.loss(x, num_samples=0)


# -- 4. leftovers and overwrites -------------------------------------------------------------------------
def test_stale_temporary_files_are_removed_at_start_up(run_copy, capsys):
    stale = run_copy / ".checkpoint.pt.999999999.0123abcd.tmp"  # no such process
    live = run_copy / f".eval_valid.json.{os.getppid()}.89abcdef.tmp"  # a writer still running
    stale.write_bytes(b"x" * 2**20)
    live.write_bytes(b"{}")
    assert main(["train", "--out", str(run_copy), "--resume", "--steps", "3", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"fastflow: removed {stale} (1.0 MiB), left by a killed writer" in err
    assert not stale.exists() and live.exists()


def test_resume_from_a_truncated_checkpoint_points_to_best(run_copy, capsys):
    path = run_copy / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:5000])
    before = snapshot(run_copy)
    err = fails(
        ["train", "--out", str(run_copy), "--resume", "--no-progress"],
        capsys,
        f"; {run_copy / 'best.pt'} is there: `--resume --checkpoint best` continues from it",
    )
    assert f"{path} is truncated or corrupt" in err
    assert snapshot(run_copy) == before
    best_step = load_checkpoint(run_copy / "best.pt")["step"]
    argv = ["train", "--out", str(run_copy), "--resume", "--checkpoint", "best", "--steps", "3", "--no-progress"]
    assert main(argv) == 0
    assert "to step 3 of 3" in capsys.readouterr().out
    assert load_checkpoint(path)["step"] == 3 and best_step <= 2
    records = MetricsLog(run_copy / "metrics.jsonl").read()
    assert [r["step"] for r in records if r["split"] == "valid"] == [0, 1, 2, 3]  # those after best.pt redone


def test_resume_without_a_latest_checkpoint_points_to_best(run_copy, capsys):
    (run_copy / "checkpoint.pt").unlink()
    fails(["train", "--out", str(run_copy), "--resume"], capsys, "--resume --checkpoint best")


def test_new_run_in_a_folder_holding_one_needs_resume_or_overwrite(run_copy, capsys):
    (run_copy / "checkpoint.pt").unlink()  # a run killed before its first checkpoint: best.pt is there
    before = snapshot(run_copy)
    argv = ["train", "--config", "tiny_wolf", "--out", str(run_copy), "--steps", "1", *QUICK]
    fails(argv, capsys, "already holds a run (config.json, best.pt, metrics.jsonl); pass --resume to continue it")
    fails([*argv, "--checkpoint", "best"], capsys, "--checkpoint best picks the checkpoint to resume from")
    fails([*argv, "--overwrite", "--resume"], capsys, "pass one")
    fails([*argv, "--overwrite", "--set", "lr=-1"], capsys, "train.lr must be > 0")
    assert snapshot(run_copy) == before  # a failed overwrite deletes nothing
    (run_copy / "notes.txt").write_text("mine")
    assert main([*argv, "--overwrite", "--set", "valid_interval=0"]) == 0
    assert load_checkpoint(run_copy / "checkpoint.pt")["step"] == 1
    assert [r["step"] for r in MetricsLog(run_copy / "metrics.jsonl").read()] == [1, 1]
    assert (run_copy / "notes.txt").read_text() == "mine"


def test_malformed_checkpoint_header_names_the_file(run_copy, capsys):
    path = run_copy / "checkpoint.pt"
    raw = path.read_bytes()
    path.write_bytes(b"FASTFLOW-CHECKPOINT one " + raw.split(b" ", 2)[2])
    fails(["sample", str(run_copy)], capsys, f"{path} has a malformed header 'FASTFLOW-CHECKPOINT one ")
    with pytest.raises(CheckpointError, match="malformed header"):
        load_checkpoint(path)


def test_metrics_log_tolerates_only_a_torn_last_line(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"split": "train", "step": 1})
    log.write({"split": "train", "step": 2})
    with log.path.open("a") as f:
        f.write('{"split": "tr')  # a kill while appending
    assert [r["step"] for r in log.read()] == [1, 2]
    log.path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl line 2 is not a JSON record"):
        log.read()
    log.path.write_text('{"step": 1}\n{"ste\n')  # cut short but then ended by a newline: not a torn write
    with pytest.raises(DataError, match="line 2"):
        log.read()
