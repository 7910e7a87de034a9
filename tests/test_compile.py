"""Regional compilation (fastflow.train.compile): compiled and eager losses and gradients agree for
each model kind, every region traces without a graph break (``fullgraph=True`` raises on one),
identical steps share a compiled graph, and a new batch size recompiles each region at most once.

Compiled with the ``aot_eager`` backend (dynamo + AOTAutograd, forward and backward traced, no kernel
code generated): what is tested is the tracing, not inductor's code."""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.utils import counters

from fastflow._versions import release
from fastflow.config import MODEL_KINDS, load_model_config
from fastflow.models import build_model
from fastflow.train.compile import DYNAMIC_SHAPES_FROM, compile_regions, regions
from fastflow.train.config import load_run_config


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def tiny(kind: str, steps0: int = 1) -> tuple[torch.nn.Module, torch.Tensor]:
    cfg = load_model_config(f"tiny_{kind}")
    cfg.flow.num_steps[0] = steps0
    torch.manual_seed(0)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 16, 16), generator=gen, dtype=torch.uint8)
    model.initialize(x, generator=gen)
    return model, x


def loss_and_grads(model, x) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model.loss(x, generator=torch.Generator().manual_seed(1))["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_compiled_regions_match_eager(kind):
    """Loss and gradients as eager (Wolf has every kind of region: refined steps, split priors, the z
    prior, encoder blocks). Level 0 has three identical steps: the first takes an input that needs no
    gradient (a graph of its own), the next two share one graph."""
    model, x = tiny(kind, steps0=3)
    expected, expected_grads = loss_and_grads(model, x[:4])
    compile_regions(model, "default", backend="aot_eager")
    loss, grads = loss_and_grads(model, x[:4])
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs < len(list(regions(model)))  # compiled, not run eagerly; identical steps share
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, g in expected_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_new_batch_size_recompiles_each_region_at_most_once():
    """Updated weights compile nothing new; a second batch size recompiles each region at most once
    (the batch dimension becomes dynamic) and later batch sizes compile nothing. Before torch 2.14 the
    regions compile static shapes (fastflow.train.compile), so each new batch size compiles each
    region once more, and no more than that."""
    model, x = tiny("glow")
    compile_regions(model, "default", backend="aot_eager")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch: int) -> int:
        loss_and_grads(model, x[:batch])
        opt.step()  # new weight versions must not recompile
        return counters["stats"]["unique_graphs"]

    first = step(4)
    assert step(4) == first
    second = step(3)  # the last, smaller batch of an epoch
    assert first < second <= 2 * first
    if release(torch.__version__) < DYNAMIC_SHAPES_FROM:
        third = step(2)
        assert second < third <= second + first and step(2) == third
    else:
        assert step(2) == step(6) == second


def test_regions_are_steps_prior_and_encoder_blocks():
    model, _ = tiny("wolf", steps0=3)
    found = list(regions(model))
    assert sum(m in found for m in model.flow.steps.layers) == 3
    assert model.prior in found and all(b in found for b in model.encoder.blocks)
    assert not any(a is not b and any(m is b for m in a.modules()) for a in found for b in found)  # disjoint


def test_compile_setting_is_checked():
    with pytest.raises(ValueError, match="compile mode must be one of"):
        compile_regions(torch.nn.Linear(2, 2), "fast")
    _, config = load_run_config("tiny_wolf", {"compile": "max-autotune"})
    assert config.compile == "max-autotune"
    with pytest.raises(Exception, match="train.compile"):
        load_run_config("tiny_wolf", {"compile": "fast"})


def test_trainer_compiles_the_regions_when_asked(tmp_path, monkeypatch):
    """``train.compile`` reaches compile_regions (here with the aot_eager backend) and the run trains
    and validates through the compiled regions."""
    from fastflow.train import distributed as D
    from fastflow.train import loop

    calls = []

    def compile_with_aot_eager(model, mode):
        calls.append(mode)
        return compile_regions(model, mode, backend="aot_eager")

    monkeypatch.setattr(loop, "compile_regions", compile_with_aot_eager)
    settings = {"steps": 2, "batch_size": 4, "init_batch_size": 8, "valid_interval": 0, "valid_limit": 8}
    settings |= {"num_samples": 4, "sample_temperatures": [1.0]}
    model_config, config = load_run_config("tiny_glow", {**settings, "compile": "default", "eval_k": 1})
    trainer = loop.Trainer(model_config, config, tmp_path, D.Context(0, 1, torch.device("cpu")), progress=False)
    summary = trainer.run()
    assert calls == ["default"] and summary["step"] == 2 and counters["stats"]["unique_graphs"] > 0
    assert math.isfinite(summary["valid_bpd"])
