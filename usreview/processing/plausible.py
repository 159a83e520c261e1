"""Values a patient can have: a last check on every processor's quantities.

A calibration can be plausible and the image still wrongly encoded (an inverted grey scale,
a region whose units lie); the processors' own checks cannot see that. So every quantity
whose name is in :data:`RANGES` (with the same unit) is checked against the widest range a
living patient can show, from a fetus to a severe stenosis. One outside it is not reported:
it becomes an ``implausible_value`` finding that names the value, the range and the advice
to check the image's calibration, and the output's other quantities, measured on the same
image, are withheld with it; the rules after it never see them.
:func:`screen` is applied by :meth:`usreview.processing.registry.Processor.run` to every
processor's output, built-in or third-party; each job records it as :data:`NAME` =
:data:`VERSION`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from usreview.processing.results import Finding, Output, Quantity

__all__ = ["NAME", "RANGES", "VERSION", "screen"]

#: How a job records that its outputs passed this check (``value_ranges=1.0``, beside its
#: processors' ``name=version``): ``usreview hub jobs --outdated`` lists the jobs done
#: without it, or with an older version, so that their values can be checked again.
NAME: Final = "value_ranges"
#: Changes when :data:`RANGES` or the rule does.
VERSION: Final = "1.0"

#: (name, UCUM unit) -> (lowest, highest), both included.
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
    wrong = [q for q in output.quantities if not _plausible(q)]
    if not wrong:
        return output
    withheld = [q.name for q in output.quantities if _plausible(q)]
    findings = []
    for quantity in wrong:
        low, high = RANGES[(quantity.name, quantity.unit)]
        what = quantity.code.meaning or quantity.name
        others = f"; withheld with it: {', '.join(withheld)}" if withheld else ""
        findings.append(
            Finding(
                "implausible_value",
                f"{what} {_number(quantity.value)} {quantity.unit} is outside what a patient "
                f"can have ({_number(low)} to {_number(high)} {quantity.unit}): not reported"
                f"{others}; check the image's calibration",
                {
                    "name": quantity.name,
                    "value": quantity.value,
                    "unit": quantity.unit,
                    "range": [low, high],
                    "withheld": withheld,
                },
            )
        )
    return replace(output, quantities=(), findings=(*output.findings, *findings))


def _plausible(quantity: Quantity) -> bool:
    bounds = RANGES.get((quantity.name, quantity.unit))
    return bounds is None or bounds[0] <= quantity.value <= bounds[1]


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)
