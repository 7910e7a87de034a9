"""A training step (loss, backward) has no host sync, so the GPU never waits for Python and the step can
be captured in a CUDA graph: every Python-level sync made from fastflow's code (``Tensor.item``,
``tolist``, ``__bool__``, ``__float__``, ``__int__``, ``.cpu()``, ``.numpy()``) raises here, for standard
and memory-efficient backprop and both backends (Triton in the interpreter on a CPU-only machine).
The checks the step used to read at once (non-finite matrices in the batched slogdet, the recompute
error of memory-efficient backprop) stay on the device until ``model.read_device_checks()``.

``torch.compile(model.loss, fullgraph=True)`` must trace the loss without a graph break (on the CPU with
the ``aot_eager`` backend, which traces forward and backward through AOTAutograd without compiling
kernels): the Triton kernels are registered as custom ops (``fastflow/ops/_launcher.py``) so the tracer
sees through them. On a GPU the device command (benchmarks/gpu_check.sh) runs the step under
``torch.cuda.set_sync_debug_mode("error")``, which also catches syncs inside C++.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fastflow.models import build_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The longest Triton cases take 14-27 s each in the interpreter: in `make test-all` only on a CPU-only
# machine; on a GPU (the device check runs `-m "not slow"`) they always run.
SLOW_ON_CPU = [pytest.mark.slow] if DEVICE == "cpu" else []


def tiny_wolf(backend: str, memory_efficient: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("tiny_wolf").to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    model.initialize(torch.randint(0, 256, (8, 3, 16, 16), generator=gen, dtype=torch.uint8).to(DEVICE), generator=gen)
    if memory_efficient:
        model.set_memory_efficient(True)
    model.set_backend(backend)
    return model, torch.randint(0, 256, (2, 3, 16, 16), generator=gen, dtype=torch.uint8).to(DEVICE)


def step(model, x) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss = model.loss(x, generator=torch.Generator().manual_seed(1))["loss"]
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize(
    "backend, memory_efficient",
    [
        pytest.param("cpu", False, id="cpu-standard"),
        pytest.param("cpu", True, id="cpu-memory_efficient"),
        pytest.param("triton", False, id="triton-standard"),
        pytest.param("triton", True, id="triton-memory_efficient", marks=SLOW_ON_CPU),
    ],
)
def test_training_step_has_no_host_sync(forbid_syncs, backend, memory_efficient):
    model, x = tiny_wolf(backend, memory_efficient)
    expected = step(model, x)  # first call: loads the extension, warms caches (may sync)
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    forbid_syncs()
    loss = step(model, x)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    assert all(torch.equal(p.grad, g) for p, g in zip((p for p in model.parameters() if p.grad is not None), grads))
    assert len(grads) > 10


def test_deferred_checks_are_read_by_the_model():
    model, x = tiny_wolf("cpu", True)
    step(model, x)
    assert not model.recompute_monitor._max_error  # still on the device
    model.read_device_checks()
    assert 0 < model.recompute_monitor.max_error < 1e-3 and model.recompute_monitor.errors


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=SLOW_ON_CPU)])
def test_compiled_loss_has_no_graph_break(backend):
    """The loss draws its noise from the global generator here (dynamo does not take Generator objects).
    The cpu and reference backends are checked the same way, with every parameter moved off its initial
    value first, by tests/test_compiled_gradients.py."""
    model, x = tiny_wolf(backend, False)
    torch.manual_seed(1)
    expected = model.loss(x)["loss"]
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    compiled = torch.compile(model.loss, fullgraph=True, backend="aot_eager")
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss = compiled(x)["loss"]
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-5)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == expected_grads.keys()
    for name, g in expected_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_deferred_check_raises_once_when_read():
    from fastflow.ops import _deferred
    from fastflow.ops._deferred import raise_deferred_errors

    check = _deferred.DeferredCheck("the test's check failed")
    try:
        raise_deferred_errors()  # nothing pending from other tests
        check.note(torch.tensor(False))
        raise_deferred_errors()
        check.note(torch.tensor(True))
        check.note(torch.tensor(False))  # OR-ed: stays set
        with pytest.raises(ValueError, match="the test's check failed"):
            raise_deferred_errors()
        raise_deferred_errors()  # read and cleared
    finally:
        _deferred._CHECKS.remove(check)
