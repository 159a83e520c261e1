"""Strict JSON for what leaves the package (summaries to sites, the CLI's ``--json``).

Python's :mod:`json` writes NaN and infinities as bare ``NaN``/``Infinity``, which strict
parsers (browsers, most languages) refuse. Here they become ``null``: a value that could
not be measured, not a number.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "finite"]


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinity) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """:func:`json.dumps` of :func:`finite` ``(value)``, refusing anything else not strict."""
    return json.dumps(finite(value), allow_nan=False, **options)
