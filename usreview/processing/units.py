"""Exact conversions between UCUM units that differ by a power of ten.

The one conversion of the processing: the rules (:mod:`.recommendations.rules`), the study
rule (:mod:`.recommendations.study`) and the value check (:mod:`.plausible`) each read a
value in the unit their bands are in with :func:`convert`. Units of one dimension convert
when :data:`UNITS` holds both (2.3 m/s is 230 cm/s, 72 % is 0.72); any other pair (``Hz``
and ``cm/s``, ``/min`` and ``/s``, a misspelt ``cm/sec``) does not, and the caller says so
rather than guess. Data and arithmetic only: reading it loads no processor.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

__all__ = ["UNITS", "convert"]

#: UCUM units converted exactly: unit -> (dimension, power of ten of the dimension's base).
UNITS: Final = {
    "m/s": ("velocity", 0),
    "cm/s": ("velocity", -2),
    "mm/s": ("velocity", -3),
    "m": ("length", 0),
    "cm": ("length", -2),
    "mm": ("length", -3),
    "L": ("volume", 0),
    "mL": ("volume", -3),
    "1": ("ratio", 0),
    "%": ("ratio", -2),
}


def convert(value: float, unit: str, to: str) -> float | None:
    """``value`` in ``unit`` expressed in ``to`` (UCUM), or ``None`` when the two do not
    convert exactly (:data:`UNITS`).

    The shift by a power of ten is done on the decimal digits, so that 2.3 m/s is 230 cm/s,
    not 229.99999999999997.
    """
    if unit == to:
        return value
    if unit not in UNITS or to not in UNITS or UNITS[unit][0] != UNITS[to][0]:
        return None
    return float(Decimal(repr(float(value))).scaleb(UNITS[unit][1] - UNITS[to][1]))
