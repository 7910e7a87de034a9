"""Every ``fastflow`` command end to end on a tiny config, and its errors for bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastflow.cli import main

TRAIN_FLAGS = [
    "--set",
    "valid_limit=32",
    "--set",
    "eval_k=1",
    "--set",
    "num_samples=4",
    "--set",
    "sample_temperatures=[1.0]",
    "--set",
    "valid_interval=0",
    "--batch-size",
    "16",
    "--no-progress",
]


@pytest.fixture(scope="module")
def wolf_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "wolf"
    assert main(["train", "--config", "tiny_wolf", "--out", str(run), "--steps", "3", *TRAIN_FLAGS]) == 0
    return run


@pytest.fixture(scope="module")
def glow_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "glow"
    assert main(["train", "--config", "tiny_refined_glow", "--out", str(run), "--steps", "1", *TRAIN_FLAGS]) == 0
    return run


def test_train_writes_a_run_folder_and_resume_extends_it(wolf_run, tmp_path, capsys):
    for name in ("config.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "bpd.png"):
        assert (wolf_run / name).is_file()
    run = tmp_path / "run"
    shutil.copytree(wolf_run, run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "to step 4" in out and str(run / "checkpoint.pt") in out
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 4


@pytest.mark.parametrize(
    "argv, outputs, printed",
    [
        (["eval", "--k", "2", "--limit", "16"], ["eval_valid.json"], r"valid: \d+\.\d+ bits/dim .* on 16 images, k=2"),
        (["eval", "--split", "train", "--limit", "8", "--out", "{tmp}/e.json"], ["{tmp}/e.json"], "train: "),
        (
            ["sample", "--temperature", "0", "0.7", "--n", "4"],
            ["samples/sample_t0.png", "samples/sample_t0.7.png"],
            "4 samples at temperature 0.7",
        ),
        (["switch", "--pairs", "3"], ["switch.png"], "3 switched pairs"),
        (
            ["interpolate", "--pairs", "2", "--alphas", "0,1", "--betas", "0,0.5,1"],
            ["interpolate_pair0.png", "interpolate_pair1.png"],
            "a 2x3 interpolation grid",
        ),
        (["reconstruct", "--n", "4", "--checkpoint", "best"], ["reconstruct.png"], "largest pixel error .*: 0\n"),
        (["probe", "--max-train", "200", "--max-test", "60"], ["probe.json"], r"z +v +raw pixels\n +\d+\.\d\d%"),
    ],
    ids=["eval", "eval-train-out", "sample", "switch", "interpolate", "reconstruct", "probe"],
)
def test_run_commands_write_what_they_say(wolf_run, tmp_path, capsys, argv, outputs, printed):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([argv[0], str(wolf_run), *argv[1:]]) == 0
    out = capsys.readouterr().out
    assert re.search(printed, out), out
    for name in outputs:
        path = Path(name.replace("{tmp}", str(tmp_path))) if "{tmp}" in name else wolf_run / name
        assert path.is_file() and path.stat().st_size > 0, path
        assert str(path) in out, out


def test_probe_json_holds_three_accuracies(wolf_run):
    result = json.loads((wolf_run / "probe.json").read_text())
    assert set(result["accuracy"]) == {"z", "v", "pixels"} and all(0 <= a <= 1 for a in result["accuracy"].values())
    assert result["dims"] == {"z": 8, "v": 768, "pixels": 768} and result["train_images"] == 200


# -- bad input ---------------------------------------------------------------------------------
def test_negative_temperature_is_a_clear_error(wolf_run, capsys):
    assert main(["sample", str(wolf_run), "--temperature", "-0.5"]) == 2
    assert "temperature must be >= 0" in capsys.readouterr().err


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--config", "tiny_wolf", "--out", str(tmp_path / "r"), "--set", "learning_rate=1"]) == 2
    assert "unknown key(s) ['learning_rate'] in train" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"kind": "wolf"}, "train": {}, "extra": 1}))
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "unknown key(s) ['extra']" in capsys.readouterr().err


def test_checkpoint_of_another_model_is_refused(wolf_run, glow_run, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(glow_run, mixed)
    shutil.copy(wolf_run / "checkpoint.pt", mixed / "checkpoint.pt")
    assert main(["eval", str(mixed)]) == 2
    assert "holds a 'wolf' model, but the configuration asks for a 'refined_glow' model" in capsys.readouterr().err
    assert main(["switch", str(glow_run)]) == 2
    assert "switch needs a model with a global code z" in capsys.readouterr().err


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-cifar"
    assert (
        main(
            [
                "train",
                "--config",
                "cifar10_wolf",
                "--dataset",
                "cifar10",
                "--data",
                str(missing),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(missing) in err and "cifar-10-python.tar.gz" in err


def test_corrupt_checkpoint_and_missing_run_are_clear_errors(wolf_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(wolf_run, broken)
    (broken / "checkpoint.pt").write_bytes((broken / "checkpoint.pt").read_bytes()[:1000])
    assert main(["sample", str(broken)]) == 2
    assert "checkpoint.pt is truncated or corrupt" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_dash_m_fastflow_exits_with_status_2_on_bad_input(wolf_run):
    result = subprocess.run(
        [sys.executable, "-m", "fastflow", "sample", str(wolf_run), "--temperature", "-1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "fastflow sample: error: temperature must be >= 0" in result.stderr
