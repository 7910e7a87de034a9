"""The typed config schema (fastflow.schema): every key has a type and a range, and a wrong value is an
error naming the key, the value and what is expected; the same for JSON files, dicts and Python."""

from __future__ import annotations

import pytest

from fastflow.config import ConfigError, FlowConfig, load_model_config, to_dict
from fastflow.errors import UsageError
from fastflow.schema import NON_NEGATIVE, POSITIVE, Range, check
from fastflow.train.config import TrainConfig, load_run_config, train_config_from


def tiny_model_block() -> dict:
    return to_dict(load_run_config("tiny_wolf")[0])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("batch_size", True, "train.batch_size must be an integer, got true (a boolean)"),
        ("batch_size", 16.0, "train.batch_size must be an integer, got 16.0 (a number)"),
        ("steps", 2.5, "train.steps must be an integer, got 2.5 (a number)"),
        ("lr", "0.001", 'train.lr must be a finite number, got "0.001" (a string)'),
        ("lr", float("nan"), "train.lr must be a finite number, got NaN (a number)"),
        ("lr", float("inf"), "train.lr must be a finite number, got Infinity (a number)"),
        ("lr", 0, "train.lr must be > 0, got 0.0"),
        ("augment", 1, "train.augment must be true or false, got 1 (an integer)"),
        ("data_path", 3, "train.data_path must be a string or null, got 3 (an integer)"),
        ("betas", 0.9, "train.betas must be a list, got 0.9 (a number)"),
        ("betas", [0.9, 1], "train.betas[1] must be in [0, 1), got 1.0"),
        ("lr_decay", 0.0, "train.lr_decay must be in (0, 1], got 0.0"),
        ("sample_temperatures", [1, "hot"], 'train.sample_temperatures[1] must be a finite number, got "hot"'),
        ("sample_temperatures", [1, -1], "train.sample_temperatures[1] must be >= 0, got -1.0"),
        ("batch_size", 0, "train.batch_size must be >= 1, got 0"),
        ("workers", -1, "train.workers must be >= 0, got -1"),
        ("seed", -5, "train.seed must be >= 0, got -5"),
    ],
)
def test_train_key_of_the_wrong_type_or_range_is_named(key, value, message):
    with pytest.raises(ConfigError) as err:
        train_config_from({key: value})
    assert str(err.value).startswith(message), str(err.value)


def test_an_int_is_accepted_where_a_float_is_expected_and_stored_as_a_float():
    config = train_config_from({"lr": 1, "grad_clip": 2, "betas": [0, 0.5], "sample_temperatures": [1]})
    assert type(config.lr) is float and config.lr == 1.0 and type(config.grad_clip) is float
    assert config.betas == [0.0, 0.5] and all(type(b) is float for b in config.betas + config.sample_temperatures)


def test_python_construction_is_checked_too():
    with pytest.raises(ConfigError, match="train.batch_size must be an integer, got true"):
        TrainConfig(batch_size=True)
    with pytest.raises(ConfigError, match=r"model.flow.hidden_channels\[0\] must be >= 1, got 0"):
        FlowConfig(levels=3, num_steps=[1, [1], 1], hidden_channels=[0, 4, 4], factors=[4])


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("image_size",), "16", 'model.image_size must be an integer, got "16" (a string)'),
        (("z_dim",), 8.0, "model.z_dim must be an integer, got 8.0 (a number)"),
        (("n_bits",), 9, "model.n_bits must be in [1, 8], got 9"),
        (("flow", "hidden_channels"), 8, "model.flow.hidden_channels must be a list, got 8 (an integer)"),
        (("flow", "num_steps"), [1, [1, "a"], 1], 'model.flow.num_steps[1][1] must be an integer, got "a"'),
        (("flow", "levels"), True, "model.flow.levels must be an integer, got true (a boolean)"),
        (("flow", "alpha"), 1.5, "model.flow.alpha must be in [0, 1], got 1.5"),
        (("flow", "transform"), "spline", "model.flow.transform must be one of ['affine', 'additive'], got 'spline'"),
        (("flow",), 3, "model.flow must be an object, got 3 (an integer)"),
        (("encoder", "out_planes"), -1, "model.encoder.out_planes must be >= 1, got -1"),
        (("prior", "hidden_features"), "256", 'model.prior.hidden_features must be an integer, got "256"'),
        (("memory_efficient",), "yes", 'model.memory_efficient must be true or false, got "yes" (a string)'),
    ],
)
def test_model_key_of_the_wrong_type_or_range_is_named(path, value, message):
    block = tiny_model_block()
    target = block
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        load_model_config(block)
    assert str(err.value).startswith(message), str(err.value)


def test_missing_keys_are_named():
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['image_size', 'flow'\] in model"):
        load_model_config({"kind": "glow"})


def test_the_bundled_model_block_round_trips():
    block = tiny_model_block()
    assert load_model_config(block) == load_run_config("tiny_wolf")[0]


def test_check_names_the_argument_and_raises_a_usage_error():
    assert check("C", 2, float, POSITIVE) == 2.0
    with pytest.raises(UsageError, match=r"^limit must be >= 0, got -1 \(an integer\)$"):
        check("limit", -1, int, NON_NEGATIVE)
    with pytest.raises(UsageError, match=r"^temperature must be a finite number, got NaN \(a number\)$"):
        check("temperature", float("nan"), float, NON_NEGATIVE)
    assert str(Range(0, 1, low_open=True)) == "in (0, 1]" and str(Range(high=3, high_open=True)) == "< 3"
