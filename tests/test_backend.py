"""backend="auto" on cards that Triton does not support (V100, T4): the torch backend, one warning."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from fastflow.ops import _backend


@pytest.fixture
def fake_card(monkeypatch):
    """CUDA device 0 reported as a card of the capability the test sets; tensors stand in for it."""
    card = {"capability": (7, 0)}
    monkeypatch.setattr(_backend, "_card_supported", {})
    monkeypatch.setattr(_backend, "triton_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: card["capability"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla V100")
    return card


def _cuda_tensor():
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))


def test_auto_falls_back_to_torch_with_one_warning_on_an_old_card(fake_card):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choices = [_backend.resolve_backend("auto", _cuda_tensor(), None) for _ in range(3)]
    assert choices == ["torch"] * 3
    assert len(caught) == 1 and issubclass(caught[0].category, RuntimeWarning)
    assert "V100" in str(caught[0].message) and "7.0" in str(caught[0].message)
    assert _backend.resolve_backend("triton", _cuda_tensor()) == "triton"  # still tried when forced


def test_auto_takes_triton_on_a_supported_card(fake_card):
    fake_card["capability"] = (9, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.resolve_backend("auto", _cuda_tensor()) == "triton"


def test_cpu_tensors_never_ask_for_the_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: pytest.fail("asked for a card"))
    assert _backend.resolve_backend("auto", torch.zeros(1)) == "torch"
