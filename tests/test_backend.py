"""The selection of an op's implementation (fastflow/ops/backends.py): backend="auto" on cards that
Triton does not support (V100, T4) takes the cpu backend's entries, with one warning; the cpu
implementation falls back to the reference where it cannot take a call; an A/B switch by name."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

import fastflow.ops.cpu  # noqa: F401  (registers every CPU implementation)
from fastflow.ops import backends


@pytest.fixture
def fake_card(monkeypatch):
    """CUDA device 0 reported as a card of the capability the test sets; tensors stand in for it."""
    card = {"capability": (7, 0)}
    monkeypatch.setattr(backends, "_card_supported", {})
    monkeypatch.setattr(backends, "triton_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: card["capability"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla V100")
    return card


def _cuda_tensor():
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))


def test_auto_falls_back_to_cpu_with_one_warning_on_an_old_card(fake_card):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choices = [backends.select("actnorm_conv1x1", "auto", _cuda_tensor(), None) for _ in range(3)]
    assert choices == ["cpu"] * 3
    assert len(caught) == 1 and issubclass(caught[0].category, RuntimeWarning)
    assert "V100" in str(caught[0].message) and "7.0" in str(caught[0].message)
    assert backends.select("actnorm_conv1x1", "triton", _cuda_tensor()) == "triton"  # still tried when forced


def test_auto_takes_triton_on_a_supported_card(fake_card):
    fake_card["capability"] = (9, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select("actnorm_conv1x1", "auto", _cuda_tensor()) == "triton"


def test_cpu_tensors_never_ask_for_the_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: pytest.fail("asked for a card"))
    assert backends.select("actnorm_conv1x1", "auto", torch.zeros(1)) == "cpu"


def test_every_op_has_an_auto_entry_and_every_cpu_entry_an_implementation():
    assert set(backends._CPU_TAKES) <= set(backends.AUTO)
    for op, table in backends.AUTO.items():
        assert {"cuda", "cpu"} <= set(table) <= {"cuda", "cpu", "cuda+compile", "cpu+compile"}
        assert set(table.values()) <= set(backends.IMPLEMENTATIONS)
        assert "cpu" not in table.values() or op in backends._CPU_TAKES, op


def test_auto_takes_the_compile_entry_only_while_compiling(monkeypatch):
    """conv1x1_bias_elu on the CPU: the cpu implementation eager, the reference (which inductor fuses)
    while torch.compile traces; an explicit backend is never changed."""
    h = torch.zeros(1, 2, 3, 3)
    assert backends.select("conv1x1_bias_elu", "auto", h) == "cpu"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert backends.select("conv1x1_bias_elu", "auto", h) == "reference"
    assert backends.select("conv1x1_bias_elu", "cpu", h) == "cpu"
    assert backends.select("affine_coupling", "auto", h) == backends.select("affine_coupling", "cpu", h)


def test_weight_norm_runs_triton_on_cuda_eager_and_the_reference_elsewhere(fake_card, monkeypatch):
    """No cpu implementation: the reference on CPU tensors, and while torch.compile traces (auto)."""
    fake_card["capability"] = (9, 0)
    cuda, cpu = _cuda_tensor(), torch.zeros(2, 3)
    assert backends.select("weight_norm", "auto", cuda, cuda) == "triton"
    assert backends.select("weight_norm", "auto", cpu, cpu[:, 0]) == "reference"
    assert backends.select("weight_norm", "cpu", cpu, cpu[:, 0]) == "reference"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert backends.select("weight_norm", "auto", cuda, cuda) == "reference"
    assert backends.select("weight_norm", "triton", cuda, cuda) == "triton"


def test_the_cpu_implementation_falls_back_to_the_reference_where_it_cannot_run():
    h = torch.zeros(2, 3, 4)
    assert backends.select("cond_bias_elu", "reference", h) == "reference"
    assert backends.select("cond_bias_elu", "cpu", h.half()) == "reference"  # no float16 kernel
    with pytest.raises(ValueError, match="unknown backend 'torch'"):
        backends.select("cond_bias_elu", "torch", h)


def test_replaced_switches_one_op_by_name_and_restores_it():
    x = torch.zeros(1, 2, 3, 3)
    with backends.replaced("coupling_net", "reference"):
        assert backends.select("coupling_net", "cpu", x) == "reference"
        assert backends.select("actnorm_conv1x1", "cpu", x) == "cpu"
    assert backends.select("coupling_net", "cpu", x) == "cpu"
    with pytest.raises(ValueError, match="expected an op"):
        with backends.replaced("coupling_net", "torch"):
            pass
