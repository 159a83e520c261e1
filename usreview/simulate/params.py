"""Simulator parameters: one frozen dataclass per kind, validated from plain keywords.

Each kind declares its parameters as dataclass fields whose ``metadata`` holds the
constraint (``lo``/``hi`` bounds or ``choices``). :func:`parse_params` turns keyword
arguments (or CLI strings) into such an instance and raises
:class:`~usreview.errors.SimulationError` naming the offending parameter.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from usreview.errors import SimulationError

__all__ = ["choice", "describe", "param", "parse_params"]

P = TypeVar("P")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def param(default: Any, lo: float | None = None, hi: float | None = None, help: str = "") -> Any:
    """Return a dataclass field with inclusive bounds ``lo``..``hi`` and a help text."""
    return dataclasses.field(default=default, metadata={"lo": lo, "hi": hi, "help": help})


def choice(default: str, choices: tuple[str, ...], help: str = "") -> Any:
    """Return a dataclass string field restricted to ``choices``."""
    return dataclasses.field(default=default, metadata={"choices": choices, "help": help})


def _coerce(name: str, kind: type, value: object) -> object:
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text not in _TRUE | _FALSE:
                    raise ValueError(text)
                return text in _TRUE
            return kind(text)
        except ValueError:
            raise SimulationError(
                f"parameter {name!r}: cannot read {value!r} as {kind.__name__}"
            ) from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise SimulationError(
            f"parameter {name!r}: expected {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _check(name: str, value: object, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise SimulationError(f"parameter {name!r}: {value!r} is not one of {', '.join(choices)}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if not math.isfinite(value):
        raise SimulationError(f"parameter {name!r}: {value!r} is not a finite number")
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SimulationError(f"parameter {name!r}: {value!r} is outside [{lo}, {hi}]")


def parse_params(cls: type[P], raw: Mapping[str, object], kind: str) -> P:
    """Build ``cls`` from ``raw`` keywords, coercing strings and checking every bound.

    Raises
    ------
    SimulationError
        For an unknown name, an unreadable value or a value out of bounds.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SimulationError(
            f"parameter {unknown[0]!r} is not known for kind {kind!r}; "
            f"known: {', '.join(sorted(fields)) or 'none'}"
        )
    hints = typing.get_type_hints(cls)
    values: dict[str, object] = {}
    for name, field in fields.items():
        value = _coerce(name, hints[name], raw[name]) if name in raw else field.default
        _check(name, value, field.metadata)
        values[name] = value
    return cls(**values)


def describe(cls: type) -> list[tuple[str, object, str]]:
    """Return ``(name, default, help)`` for every parameter of ``cls``."""
    return [(f.name, f.default, str(f.metadata.get("help", ""))) for f in dataclasses.fields(cls)]
