"""Smoke test of ``python -m benchmarks suite --quick`` (tiny configs, one repeat), so the benchmarks do not rot,
and of the one piece of file handling that must not lose other engineers' work."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from kernel_checks import autograd_node_names

from benchmarks._common import replace_block
from benchmarks.bench_kernels import TRAFFIC

REPO = Path(__file__).resolve().parent.parent
OTHER_SECTION = "## Batched log-determinant\n\nwritten by someone else\n"


def run_python(*args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository root; fails the test (with its output) on a non-zero exit."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_replace_block_keeps_everything_outside_it(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# title\n\n" + OTHER_SECTION)
    replace_block(path, "mine", "first", "title")
    replace_block(path, "mine", "second", "title")
    text = path.read_text()
    assert OTHER_SECTION in text and "second" in text and "first" not in text
    assert text.count("<!-- mine:begin -->") == 1


@pytest.mark.slow  # `make bench` end to end, 20 s: in `make test-all`
def test_quick_benchmark_writes_every_result(tmp_path: Path) -> None:
    (tmp_path / "RESULTS.md").write_text("# fastflow benchmarks\n\n" + OTHER_SECTION)
    run_python("-m", "benchmarks", "suite", "--quick", "--out", str(tmp_path))

    text = (tmp_path / "RESULTS.md").read_text()
    assert OTHER_SECTION in text and "## Models against stock Glow on the CPU" in text
    assert (tmp_path / "throughput.png").stat().st_size > 0

    with open(tmp_path / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["section"] == "models"]
    assert {r["model"] for r in rows} == {"glow", "refined_glow", "wolf"}
    assert {r["variant"] for r in rows} >= {"cpu", "cpu+bf16"}
    for r in rows:
        assert float(r["train_img_s"]) > 0 and float(r["sample_img_s"]) > 0
        assert float(r["gflop_per_image"]) > 0 and float(r["state_mib"]) > 0
        assert r["cpu"] and r["torch"] and r["date"]
        if r["variant"] in ("cpu", "cpu+channels_last"):
            assert int(r["roundtrip_max_err"]) == 0, r  # float32 flows invert exactly
    glow = next(r for r in rows if r["model"] == "glow" and r["variant"] == "cpu")
    assert float(glow["vs_glow"]) == 1.0 and float(glow["flops_vs_glow"]) == 1.0
    reference = [r for r in rows if r["variant"] == "reference"]
    assert len(reference) == 3 and all(float(r["vs_reference"]) == 1.0 for r in reference)
    assert all(float(r["vs_reference"]) > 0 for r in rows if r["variant"] == "cpu")


def test_op_benchmark_times_reference_and_cpu() -> None:
    """``python -m benchmarks kernels --quick``: every op timed as its reference and its cpu backend."""
    proc = run_python("-m", "benchmarks", "kernels", "--quick")
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in TRAFFIC]
    assert {r[0] for r in rows} == set(TRAFFIC) and "fused = cpu backend" in proc.stdout
    assert all(float(r[-7]) > 0 and float(r[-5]) > 0 for r in rows), proc.stdout  # ref ms, fused ms


@pytest.mark.slow
def test_step_targets_benchmark_runs() -> None:
    """``python -m benchmarks step`` (the speed targets) on a tiny config: a ratio per variant
    and a verdict per target."""
    args = ["--config", "tiny_wolf", "--batch", "2", "--rounds", "1", "--threads", "1"]
    proc = run_python("-m", "benchmarks", "step", *args, "--variants", "reference", "cpu", "cpu+bf16")
    verdicts = proc.stdout.count("-> MET") + proc.stdout.count("-> NOT MET") + proc.stdout.count("NOT MEASURED")
    assert proc.stdout.count("x reference speed") >= 2 and verdicts == 3
    args = ["--config", "tiny_wolf", "--batch", "2", "--rounds", "2", "--steps", "1", "--threads", "1"]
    proc = run_python("-m", "benchmarks", "step", *args, "--processes", "--variants", "reference", "cpu")
    assert "in fresh processes" in proc.stdout and proc.stdout.count("x reference speed;") == 2


def test_profile_classes_sort_ops_by_kind() -> None:
    """The first matching class takes an op: the optimizer's own ops, not every sqrt; the fused ops by
    their kind; views apart from copies."""
    from benchmarks.profile_step import op_class

    assert op_class("aten::mm") == op_class("fastflow::im2col_rows") == "GEMM and convolution"
    assert op_class("aten::lerp_") == op_class("Optimizer.step#AdamW.step") == "optimizer-only ops"
    assert op_class("aten::_fused_adamw_") == op_class("aten::_fused_adam_") == "optimizer-only ops"
    assert op_class("aten::sqrt") == op_class("aten::add_") == "elementwise and reductions"
    assert op_class("fastflow::cond_bias_elu_backward") == "ELU and bias + ELU"
    assert op_class("fastflow::cond_bias_elu_backward_") == "ELU and bias + ELU"
    assert op_class("fastflow::coupling_backward") == "coupling"
    assert op_class("aten::permute") == "views and allocation" and op_class("aten::copy_") == "copies, casts, cat"
    assert op_class("AffineCouplingFunctionBackward") == "autograd and Python autograd Functions"
    assert op_class("Unknown") == "other"


@pytest.mark.slow
def test_profile_and_coupling_net_benchmarks_run() -> None:
    proc = run_python(
        "-m",
        "benchmarks",
        "profile_step",
        "--config",
        "tiny_wolf",
        "--batch",
        "2",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--classes",
    )
    assert "**step total**" in proc.stdout and "| GEMM and convolution |" in proc.stdout
    proc = run_python("-m", "benchmarks", "coupling_net", "--batch", "2", "--hidden", "16", "--rounds", "1")
    assert proc.stdout.count("rows") == 5 and "nchw" in proc.stdout  # its values checked against the reference


@pytest.mark.parametrize(
    "switch, extra",
    [("coupling_net", []), ("cond_bias_elu", []), ("affine_coupling", []), ("inplace", ["--no-grad"]), ("actnorm", [])],
)
def test_cpu_ab_benchmark_runs(switch, extra) -> None:
    """``python -m benchmarks cpu_ab`` (one CPU formulation on and off in whole steps) on a tiny config."""
    args = ["--config", "tiny_wolf", "--batch", "2", "--rounds", "2", "--threads", "1", *extra]
    proc = run_python("-m", "benchmarks", "cpu_ab", "--switch", switch, *args)
    for name in ("off", "on"):
        assert f"{switch} {name}: step" in proc.stdout and "peak memory rise" in proc.stdout
    assert f"{switch} on vs off:" in proc.stdout


def test_cpu_ab_switches_change_the_path() -> None:
    """Each switch really takes its formulation off (and puts it back): the autograd graph or the
    in-place calls differ, so an A/B of two identical paths cannot pass for a measurement."""
    import torch

    from benchmarks.bench_cpu_ab import switched_off
    from fastflow.flows import image_coupling
    from fastflow.ops.cond_bias_elu import cond_bias_elu

    layer = image_coupling(6, 8, 3, "skip", "up")
    layer.backend = layer.net.backend = "cpu"
    x, z = torch.randn(2, 6, 4, 4, requires_grad=True), torch.randn(2, 3)
    h, bias = torch.randn(2, 8, 4, 4, requires_grad=True), torch.randn(2, 8)

    def nodes(switch: str, off: bool) -> set[str]:
        with switched_off(switch, off):
            if switch == "cond_bias_elu":
                return {type(cond_bias_elu(h, bias, backend="cpu").grad_fn).__name__}
            return autograd_node_names(layer(x, z)[0])

    for switch, node in (
        ("coupling_net", "CouplingNetRowsFunctionBackward"),
        ("cond_bias_elu", "CondBiasEluFunctionBackward"),
        ("affine_coupling", "AffineCouplingFunctionBackward"),
    ):
        assert node in nodes(switch, False) and node not in nodes(switch, True), switch
        assert node in nodes(switch, False), f"{switch} not restored"
    with switched_off("inplace", True):  # the attribute FlowSequence reads (tests/test_flows.py)
        assert not layer.writes_in_place
    assert layer.writes_in_place
    with switched_off("actnorm", True):  # what FlowSequence asks (tests/test_coupling_actnorm.py)
        assert not layer.folds_actnorm()
    assert layer.folds_actnorm()


def test_cpu_ab_inplace_needs_no_grad() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "cpu_ab", "--switch", "inplace"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--switch inplace changes only no-grad runs: add --no-grad" in proc.stderr


def test_kernel_report_waves_share_and_launch_ratios() -> None:
    pytest.importorskip("triton")
    from types import SimpleNamespace

    from benchmarks.kernel_report.launch_count import ratios, table
    from benchmarks.kernel_report.report import filled_share

    launches = [SimpleNamespace(bytes_moved=n) for n in (100, 300, 600)]
    assert filled_share(launches, [1.9, 2.0, 0.5]) == pytest.approx(0.3)  # only the 2.0-wave launch counts
    assert filled_share([], []) == 1.0
    counts = {"bf16": {"reference": (90, 10), "triton": (30, 10)}}
    assert ratios(counts) == {"bf16": pytest.approx(0.4)}
    assert table(counts)[-1] == "| triton | bf16 | 30 | 10 | 40 | 0.40 |"
