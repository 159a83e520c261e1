"""Values a patient can have: a last check on every processor's quantities.

A calibration can be plausible and the image still wrongly encoded (an inverted grey scale,
a region whose units lie); the processors' own checks cannot see that. So every quantity
whose name is in :data:`RANGES` is checked against the widest range a living patient can
show, from a fetus to a severe stenosis, in the range's unit: a value in another unit is
converted first with the rules' exact conversion (:func:`usreview.processing.units.convert`:
a velocity of 9 m/s is checked as 900 cm/s, a length in cm as mm), and one in a unit that
does not convert exactly to the range's is not checked (nothing says what it would be).
One outside its range is not reported: it becomes an ``implausible_value`` finding that
names the value, the range and the advice to check the image's calibration, and the
output's other quantities, measured on the same image, are withheld with it; the rules
after it never see them.
:func:`screen` is applied by :meth:`usreview.processing.registry.Processor.run` to every
processor's output, built-in or third-party; each job records it as :data:`NAME` =
:data:`VERSION`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Final, NamedTuple

from usreview.processing.results import Finding, Output, Quantity
from usreview.processing.units import convert

__all__ = ["NAME", "RANGES", "VERSION", "screen"]

#: How a job records that its outputs passed this check (``value_ranges=1.0``, beside its
#: processors' ``name=version``): ``usreview hub jobs --outdated`` lists the jobs done
#: without it, or with an older version, so that their values can be checked again.
NAME: Final = "value_ranges"
#: Changes when :data:`RANGES` or the rule does. 1.1 converts the units (1.0 checked a value
#: only in the range's own unit: 9 m/s passed, 3 m/s was not seen at all).
VERSION: Final = "1.1"

#: (name, UCUM unit) -> (lowest, highest), both included, in that unit; one unit per name.
RANGES: Final[Mapping[tuple[str, str], tuple[float, float]]] = {
    # Blood reaches some 6-7 m/s through a severe valve stenosis; diastolic flow may reverse.
    ("peak_systolic_velocity", "cm/s"): (0.0, 800.0),
    ("peak_velocity", "cm/s"): (0.0, 800.0),
    ("end_diastolic_velocity", "cm/s"): (-400.0, 600.0),
    ("time_averaged_peak_velocity", "cm/s"): (-400.0, 800.0),
    ("velocity_time_integral", "cm"): (-300.0, 300.0),
    # (PSV - EDV) / PSV exceeds 1 only when diastolic flow reverses.
    ("resistive_index", "1"): (0.0, 2.0),
    ("pulsatility_index", "1"): (0.0, 30.0),
    # From deep bradycardia to a fetal or neonatal tachycardia.
    ("heart_rate", "/min"): (15.0, 300.0),
    ("lv_internal_dimension_diastole", "mm"): (5.0, 120.0),
    ("lv_internal_dimension_systole", "mm"): (2.0, 110.0),
    ("fractional_shortening", "1"): (0.0, 0.9),
    ("septal_excursion", "mm"): (0.0, 50.0),
    ("posterior_wall_excursion", "mm"): (0.0, 50.0),
    ("volume", "mL"): (0.0, 10_000.0),
}


def screen(output: Output) -> Output:
    """``output`` unchanged, or, if a quantity lies outside :data:`RANGES`, without any
    quantity: each implausible value becomes a finding, and the others, measured on the same
    image with the same calibration, are withheld with it (the finding names them)."""
    checks = [(quantity, _check(quantity)) for quantity in output.quantities]
    wrong = [(quantity, check) for quantity, check in checks if check and not check.plausible]
    if not wrong:
        return output
    withheld = [q.name for q, check in checks if check is None or check.plausible]
    findings = []
    for quantity, check in wrong:
        what = quantity.code.meaning or quantity.name
        others = f"; withheld with it: {', '.join(withheld)}" if withheld else ""
        shown = f"{_number(quantity.value)} {quantity.unit}"
        if check.unit != quantity.unit:
            shown += f" ({_number(check.value)} {check.unit})"
        findings.append(
            Finding(
                "implausible_value",
                f"{what} {shown} is outside what a patient can have ({_number(check.low)} to "
                f"{_number(check.high)} {check.unit}): not reported{others}; check the "
                "image's calibration",
                {
                    "name": quantity.name,
                    "value": quantity.value,
                    "unit": quantity.unit,
                    "range": [check.low, check.high],
                    "range_unit": check.unit,
                    "withheld": withheld,
                },
            )
        )
    return replace(output, quantities=(), findings=(*output.findings, *findings))


_BY_NAME: Final = {name: (unit, bounds) for (name, unit), bounds in RANGES.items()}


class _Check(NamedTuple):
    """A quantity's value in its range's unit, and the range."""

    value: float
    unit: str
    low: float
    high: float

    @property
    def plausible(self) -> bool:
        return self.low <= self.value <= self.high


def _check(quantity: Quantity) -> _Check | None:
    """``quantity`` against its range, or ``None`` when its name has no range or its unit
    does not convert exactly to the range's (:func:`~usreview.processing.units.convert`)."""
    known = _BY_NAME.get(quantity.name)
    if known is None:
        return None
    unit, (low, high) = known
    value = convert(quantity.value, quantity.unit, unit)
    return None if value is None else _Check(value, unit, low, high)


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)
