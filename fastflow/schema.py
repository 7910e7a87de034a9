"""Typed settings: the type and the allowed range of every config key, and of API/CLI arguments.

A config is a dataclass; each field's type hint is its type and :func:`setting` attaches its allowed
:class:`Range`. :func:`validate_fields` (called by each config's ``__post_init__``) enforces both, so
a config built from JSON, from ``--set key=value`` or in Python is checked the same way. The rules:

- ``bool`` is not an ``int``; an ``int`` is accepted where a ``float`` is expected (and stored as a
  float); nothing else is converted (``"16"`` is not an int, ``16.0`` is not an int);
- floats must be finite; ``list[T]`` checks every item; ``X | None`` accepts null; a range applies
  to every number of a list;
- a wrong value raises :class:`~fastflow.errors.ConfigError` naming the key (``train.lr``,
  ``model.flow.hidden_channels[1]``), the value and what is expected.

:func:`check` applies the same rules to one argument (raising :class:`~fastflow.errors.UsageError`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Literal, TypeVar

from fastflow.errors import ConfigError, UsageError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of allowed numbers; ``None`` leaves that side open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
UNIT_INTERVAL = Range(0, 1)  # probabilities, and the coupling scale bound alpha


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, allowed: Range | None = None):
    """A dataclass field with an allowed range (``default`` or ``factory``, as ``dataclasses.field``)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"allowed": allowed})


def show(value: Any) -> str:
    """A value as the user wrote it (JSON where possible), with its kind: ``"16" (a string)``."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    kinds[dict] = "an object"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    kind = kinds.get(type(value), "null" if value is None else type(value).__name__)
    return text if kind == "null" else f"{text} ({kind})"


def _expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in typing.get_args(hint))
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if hint is list or origin is list:
        return "a list"
    if dataclasses.is_dataclass(hint):
        return "an object"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}
    return names[hint]


def _matches(hint: Any, value: Any) -> bool:
    """Whether ``value`` has the kind of ``hint`` (shallow: a list matches any list type)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is list or origin is list:
        return isinstance(value, (list, tuple))
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    return isinstance(value, hint)


def _typed(hint: Any, value: Any, key: str, error: type[Exception]) -> Any:
    """``value`` checked against ``hint`` (ints become floats where a float is expected)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arm = next((a for a in typing.get_args(hint) if _matches(a, value)), None)
        if arm is None:
            raise error(f"{key} must be {_expected(hint)}, got {show(value)}")
        return _typed(arm, value, key, error)
    if not _matches(hint, value):
        raise error(f"{key} must be {_expected(hint)}, got {show(value)}")
    if hint is float:
        if not math.isfinite(value):
            raise error(f"{key} must be a finite number, got {show(value)}")
        return float(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_typed(item, v, f"{key}[{i}]", error) for i, v in enumerate(value)]
    if hint is list:
        return list(value)
    return value


def _in_range(value: Any, allowed: Range, key: str, error: type[Exception]) -> None:
    if isinstance(value, list):
        for i, v in enumerate(value):
            _in_range(v, allowed, f"{key}[{i}]", error)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value not in allowed:
        raise error(f"{key} must be {allowed}, got {show(value)}")


def check(name: str, value: Any, hint: Any, allowed: Range | None = None, error: type[Exception] = UsageError) -> Any:
    """``value`` of the argument ``name`` if it has type ``hint`` and lies in ``allowed`` (ints become
    floats where a float is expected); else ``error`` naming it, the value and what is expected."""
    value = _typed(hint, value, name, error)
    if allowed is not None:
        _in_range(value, allowed, name, error)
    return value


def validate_fields(config: Any, where: str) -> None:
    """Check every field of the dataclass ``config`` against its type hint and allowed range
    (:func:`setting`); keys are named ``<where>.<field>``. Ints in float fields become floats."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        key, allowed = f"{where}.{f.name}", f.metadata.get("allowed")
        object.__setattr__(config, f.name, check(key, getattr(config, f.name), hints[f.name], allowed, ConfigError))


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build the dataclass ``cls`` from ``data``, recursing into nested dataclasses.

    Raises :class:`ConfigError` for unknown or missing keys, naming them and ``where`` they are; the
    values are checked by ``cls`` itself (:func:`validate_fields`).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed keys: {sorted(fields)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing key(s) {missing} in {where}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _nested(hints[name], value, f"{where}.{name}") for name, value in data.items()})


def _nested(hint: Any, value: Any, where: str) -> Any:
    """A JSON object where a config dataclass (or an optional one) is expected becomes that dataclass."""
    arms = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    block = next((a for a in arms if dataclasses.is_dataclass(a)), None)
    if block is not None and isinstance(value, dict):
        return from_dict(block, value, where)
    return value
