"""A reviewer's own measurements, in calibrated units, from the Sequence of Ultrasound Regions.

Points are image pixels ``(x = column, y = row)`` of the displayed frame, as a caliper picks
them. Every function finds the one region that calibrates all its points
(:func:`usreview.dicom.region_for_points`): points in regions of different calibration are
refused with :class:`~usreview.errors.MixedCalibrationError`; points outside every region, in a
region of the wrong units or in a region without a usable pixel size (a Physical Delta missing,
zero or not finite on an axis with units) with :class:`~usreview.errors.CalibrationError`,
whose message the caliper widgets show instead of a value; and a degenerate pick (two
identical beats, an ellipse without width) with :class:`ValueError`.

===================  ===========================================  ==========================
function             points                                       result (UCUM)
===================  ===========================================  ==========================
:func:`distance`     two ends                                     distance, mm or cm
:func:`ellipse`      centre, end of one axis, end of the other    area mm2 or cm2,
                                                                  circumference (Ramanujan),
                                                                  both diameters
:func:`velocity`     one point of a spectral display              signed velocity, cm/s
:func:`doppler`      systolic peak, end diastole                  PSV, EDV (cm/s), RI
:func:`heart_rate`   the same phase of two consecutive beats      heart rate, /min
:func:`excursion`    two depths of an M-mode strip                excursion, mm or cm
===================  ===========================================  ==========================

Velocities follow the display's own calibration: the baseline is the row whose physical value
is zero (reference pixel and reference value, as :func:`.spectral.calibrate` reads them), and
the flow direction is the side of the baseline that holds the systolic peak, as the
``doppler_indices`` processor reports magnitudes for the side that holds the signal. The
end-diastolic velocity is signed relative to that direction, so that diastolic flow reversal
gives an RI above 1. Codes are those the processors use (LOINC for PSV, EDV, RI and heart
rate) and DICOM/SNOMED CT codes for distance, area, circumference and axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from usreview.dicom import (
    PhysicalUnits,
    RegionSpatialFormat,
    UltrasoundInstance,
    UltrasoundRegion,
    region_for_points,
)
from usreview.errors import CalibrationError
from usreview.processing.quantification.codes import CODES as _DOPPLER_CODES
from usreview.processing.quantification.spectral import calibrate
from usreview.processing.results import Code, CodingScheme, Quantity

__all__ = [
    "CODES",
    "DopplerIndices",
    "EllipseMeasurement",
    "Measurement",
    "Point",
    "Source",
    "distance",
    "doppler",
    "ellipse",
    "excursion",
    "heart_rate",
    "ramanujan_circumference",
    "velocity",
]

Point = tuple[float, float]
#: Where the calibration comes from: an instance or its regions.
Source = UltrasoundInstance | Sequence[UltrasoundRegion]
LengthUnit = Literal["mm", "cm"]

#: Concept code and UCUM unit by measurement name; PSV, EDV, RI and heart rate are the
#: processors' own (:data:`usreview.processing.quantification.codes.CODES`).
CODES: dict[str, tuple[Code, str]] = {
    "distance": (Code("121206", CodingScheme.DCM, "Distance"), "mm"),
    "area": (Code("42798000", CodingScheme.SNOMED, "Area"), "mm2"),
    "circumference": (Code("74551000", CodingScheme.SNOMED, "Circumference"), "mm"),
    "major_axis": (Code("131187009", CodingScheme.SNOMED, "Major Axis"), "mm"),
    "minor_axis": (Code("131188004", CodingScheme.SNOMED, "Minor Axis"), "mm"),
    **{
        name: _DOPPLER_CODES[name]
        for name in (
            "peak_systolic_velocity",
            "end_diastolic_velocity",
            "resistive_index",
            "heart_rate",
        )
    },
}

_LABELS = {
    "distance": "Distance",
    "area": "Area",
    "circumference": "Circumference",
    "major_axis": "Major axis",
    "minor_axis": "Minor axis",
    "velocity": "Velocity",
    "peak_systolic_velocity": "PSV",
    "end_diastolic_velocity": "EDV",
    "resistive_index": "RI",
    "heart_rate": "HR",
    "excursion": "Excursion",
}
_SHOWN_UNITS = {"mm2": "mm²", "cm2": "cm²", "/min": "bpm", "1": ""}
_DIGITS = {"mm": 2, "cm": 3, "mm2": 1, "cm2": 3, "cm/s": 1, "1": 3, "/min": 1}


@dataclass(frozen=True)
class Measurement:
    """One calibrated value a reviewer measured.

    Attributes
    ----------
    name
        What was measured (``distance``, ``area``, ``peak_systolic_velocity``, ...).
    value
        The value in :attr:`unit`.
    unit
        UCUM unit (``mm``, ``mm2``, ``cm/s``, ``/min``, ``1``).
    code
        The concept code, where a standard one exists (``None`` otherwise).
    points
        The image points it was measured from.
    details
        JSON-ready extras (times, flow direction, the calibrating region; on a frame of a
        cine, ``frame_number``, 1-based, as the caliper records it).
    """

    name: str
    value: float
    unit: str
    code: Code | None = None
    points: tuple[Point, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"measurement {self.name}: value {self.value!r} is not finite")
        object.__setattr__(self, "value", float(self.value))

    @property
    def label(self) -> str:
        """Short human name (``PSV``, ``Distance``)."""
        return _LABELS.get(self.name, self.name.replace("_", " ").capitalize())

    @property
    def text(self) -> str:
        """The value as shown to the reviewer, e.g. ``Distance 12.34 mm``."""
        digits = _DIGITS.get(self.unit, 2)
        unit = _SHOWN_UNITS.get(self.unit, self.unit)
        return f"{self.label} {self.value:.{digits}f} {unit}".rstrip()

    def as_dict(self) -> dict[str, Any]:
        """JSON view: name, label, value, unit, text, code (or ``None``), points, details."""
        return {
            "name": self.name,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "text": self.text,
            "code": self.code.as_dict() if self.code is not None else None,
            "points": [[float(x), float(y)] for x, y in self.points],
            "details": dict(self.details),
        }

    def to_quantity(self) -> Quantity:
        """The measurement as a processing :class:`~usreview.processing.results.Quantity`.

        Raises
        ------
        ValueError
            When the measurement has no concept code.
        """
        if self.code is None:
            raise ValueError(f"measurement {self.name} has no concept code")
        return Quantity(self.name, self.code, self.value, self.unit, details=dict(self.details))


@dataclass(frozen=True)
class EllipseMeasurement:
    """Area, circumference and both diameters of an ellipse."""

    area: Measurement
    circumference: Measurement
    major_axis: Measurement
    minor_axis: Measurement

    @property
    def measurements(self) -> tuple[Measurement, ...]:
        """Area, circumference, major and minor axis, in that order."""
        return (self.area, self.circumference, self.major_axis, self.minor_axis)


@dataclass(frozen=True)
class DopplerIndices:
    """Peak systolic and end-diastolic velocity and the resistive index of one cycle."""

    psv: Measurement
    edv: Measurement
    ri: Measurement

    @property
    def measurements(self) -> tuple[Measurement, ...]:
        """PSV, EDV and RI, in that order."""
        return (self.psv, self.edv, self.ri)


# --- helpers ----------------------------------------------------------------------------


def _regions(source: Source) -> Sequence[UltrasoundRegion]:
    if isinstance(source, UltrasoundInstance):
        return source.regions
    return source


def _point(value: Sequence[float], name: str) -> Point:
    try:
        x, y = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"argument {name!r}: expected an (x, y) pixel, got {value!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"argument {name!r}: pixel {value!r} is not finite")
    return (x, y)


def _describe(region: UltrasoundRegion) -> str:
    return (
        f"a {region.data_type.name.lower()} region in "
        f"{region.units_x.ucum} by {region.units_y.ucum}"
    )


def _region_info(region: UltrasoundRegion) -> dict[str, Any]:
    return {
        "data_type": region.data_type.name.lower(),
        "bounds": list(region.bounds),
        "units": [region.units_x.ucum, region.units_y.ucum],
        "deltas": [region.delta_x, region.delta_y],
    }


def _length_factor(unit: LengthUnit) -> float:
    if unit not in ("mm", "cm"):
        raise ValueError(f"argument 'unit': {unit!r} is not 'mm' or 'cm'")
    return 10.0 if unit == "mm" else 1.0


def _coded(name: str) -> Code | None:
    entry = CODES.get(name)
    return entry[0] if entry is not None else None


def _spatial_region(source: Source, points: Sequence[Point]) -> UltrasoundRegion:
    region = region_for_points(_regions(source), points)
    if region.units_x != PhysicalUnits.CM or region.units_y != PhysicalUnits.CM:
        raise CalibrationError(
            f"a length or area needs a region calibrated in cm on both axes; "
            f"the points lie in {_describe(region)}"
        )
    return region


def _physical(region: UltrasoundRegion, point: Point) -> Point:
    px, py = region.to_physical(point[0], point[1])
    return (float(px), float(py))


# --- B-mode -----------------------------------------------------------------------------


def distance(
    source: Source, p0: Sequence[float], p1: Sequence[float], *, unit: LengthUnit = "mm"
) -> Measurement:
    """The distance between two image points, in ``unit`` (``mm`` or ``cm``).

    Raises
    ------
    MixedCalibrationError
        The points lie in regions of different calibration.
    CalibrationError
        A point lies outside every region, the region is not calibrated in cm, or it has
        no usable pixel size on an axis.
    """
    a, b = _point(p0, "p0"), _point(p1, "p1")
    region = _spatial_region(source, (a, b))
    (ax, ay), (bx, by) = _physical(region, a), _physical(region, b)
    value = math.hypot(bx - ax, by - ay) * _length_factor(unit)
    return Measurement(
        "distance", value, unit, _coded("distance"), (a, b), {"region": _region_info(region)}
    )


def ramanujan_circumference(a: float, b: float) -> float:
    """Circumference of an ellipse of semi-axes ``a`` and ``b`` (Ramanujan's second formula).

    Exact for a circle; relative error below 4e-5 even for an eccentric 10:1 ellipse.
    """
    if a < 0 or b < 0:
        raise ValueError(f"semi-axes must not be negative, got {a}, {b}")
    if a + b == 0:
        return 0.0
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1.0 + 3.0 * h / (10.0 + math.sqrt(4.0 - 3.0 * h)))


def ellipse(
    source: Source,
    center: Sequence[float],
    axis_end: Sequence[float],
    other_end: Sequence[float],
    *,
    unit: LengthUnit = "mm",
) -> EllipseMeasurement:
    """Area, circumference and diameters of an ellipse drawn from three image points.

    ``center`` is the ellipse's centre, ``axis_end`` the end of one semi-axis; the other
    semi-axis is the distance of ``other_end`` from the line through the first axis (a
    reviewer need not click exactly perpendicular). Distances are taken in physical space,
    so a region with different x and y spacing is handled. The whole ellipse (its four axis
    ends) must lie in one calibration.

    Raises
    ------
    MixedCalibrationError, CalibrationError
        As :func:`distance`.
    ValueError
        The first axis has no length or the ellipse has no width.
    """
    c = _point(center, "center")
    a_end, b_end = _point(axis_end, "axis_end"), _point(other_end, "other_end")
    mirrored = [(2 * c[0] - p[0], 2 * c[1] - p[1]) for p in (a_end, b_end)]
    region = _spatial_region(source, (c, a_end, b_end, *mirrored))
    (cx, cy), (ax, ay), (bx, by) = (_physical(region, p) for p in (c, a_end, b_end))
    ux, uy = ax - cx, ay - cy
    a = math.hypot(ux, uy)
    if a == 0:
        raise ValueError("the ellipse's centre and axis end coincide; drag out an axis first")
    b = abs(ux * (by - cy) - uy * (bx - cx)) / a
    if b == 0:
        raise ValueError("the ellipse has no width: its third point lies on the first axis")
    factor = _length_factor(unit)
    a_u, b_u = a * factor, b * factor
    area_unit = f"{unit}2"
    points = (c, a_end, b_end)
    details = {"region": _region_info(region), "semi_axes": [a_u, b_u]}
    major, minor = max(a_u, b_u), min(a_u, b_u)
    return EllipseMeasurement(
        area=Measurement("area", math.pi * a_u * b_u, area_unit, _coded("area"), points, details),
        circumference=Measurement(
            "circumference",
            ramanujan_circumference(a_u, b_u),
            unit,
            _coded("circumference"),
            points,
            {**details, "method": "Ramanujan II"},
        ),
        major_axis=Measurement("major_axis", 2 * major, unit, _coded("major_axis"), points),
        minor_axis=Measurement("minor_axis", 2 * minor, unit, _coded("minor_axis"), points),
    )


# --- spectral Doppler -------------------------------------------------------------------


def _spectral_region(source: Source, points: Sequence[Point]) -> UltrasoundRegion:
    region = region_for_points(_regions(source), points)
    if region.units_x != PhysicalUnits.SECONDS or region.units_y != PhysicalUnits.CM_PER_SECOND:
        raise CalibrationError(
            "a velocity needs a spectral Doppler region calibrated in s and cm/s; "
            f"the points lie in {_describe(region)}"
        )
    return region


def _velocity_at(region: UltrasoundRegion, point: Point) -> tuple[float, float]:
    """(time s, signed velocity cm/s) of an image point, through the processors' calibration."""
    cal = calibrate(region)
    v = (point[1] - region.min_y0 - cal.baseline_row) * cal.velocity_per_row
    t = float(region.to_physical(point[0], point[1])[0])
    return t, float(v)


def velocity(source: Source, point: Sequence[float]) -> Measurement:
    """The signed velocity (cm/s, positive toward the probe) at one point of a spectral display.

    ``details`` holds the time (s) and the side of the baseline (``toward``/``away``).
    """
    p = _point(point, "point")
    region = _spectral_region(source, (p,))
    t, v = _velocity_at(region, p)
    side = "toward" if v > 0 else "away" if v < 0 else "baseline"
    return Measurement(
        "velocity", v, "cm/s", None, (p,), {"time_s": t, "flow": side, **_region_info(region)}
    )


def doppler(source: Source, peak: Sequence[float], end_diastole: Sequence[float]) -> DopplerIndices:
    """PSV, EDV and RI from a reviewer's systolic peak and end-diastolic points.

    The flow direction is the side of the baseline that holds ``peak``; PSV is its velocity's
    magnitude and EDV the end-diastolic velocity signed along that direction (negative for
    reversed diastolic flow); ``RI = (PSV - EDV) / PSV``.

    Raises
    ------
    MixedCalibrationError, CalibrationError
        The points are not in one spectral region calibrated in s and cm/s.
    ValueError
        The peak lies on the baseline, or the end-diastolic velocity exceeds the peak.
    """
    p, e = _point(peak, "peak"), _point(end_diastole, "end_diastole")
    region = _spectral_region(source, (p, e))
    t_peak, v_peak = _velocity_at(region, p)
    t_ed, v_ed = _velocity_at(region, e)
    if v_peak == 0:
        raise ValueError("the systolic peak lies on the baseline: pick the top of the spectrum")
    sign = 1.0 if v_peak > 0 else -1.0
    psv, edv = abs(v_peak), v_ed * sign
    if edv > psv:
        raise ValueError(
            f"the end-diastolic velocity ({edv:.1f} cm/s) exceeds the peak ({psv:.1f} cm/s); "
            "pick the systolic peak and then the end of diastole"
        )
    flow = "toward" if sign > 0 else "away"
    details = {"flow": flow, "region": _region_info(region)}
    return DopplerIndices(
        psv=Measurement(
            "peak_systolic_velocity",
            psv,
            "cm/s",
            _coded("peak_systolic_velocity"),
            (p,),
            {**details, "time_s": t_peak},
        ),
        edv=Measurement(
            "end_diastolic_velocity",
            edv,
            "cm/s",
            _coded("end_diastolic_velocity"),
            (e,),
            {**details, "time_s": t_ed, "reversed": edv < 0},
        ),
        ri=Measurement(
            "resistive_index",
            (psv - edv) / psv,
            "1",
            _coded("resistive_index"),
            (p, e),
            details,
        ),
    )


# --- time-based displays (M-mode, spectral) ---------------------------------------------


def heart_rate(source: Source, beat: Sequence[float], next_beat: Sequence[float]) -> Measurement:
    """Heart rate (/min) from the same phase of two consecutive beats on a time axis.

    Works on any region whose x axis is time (M-mode strip, spectral Doppler, ECG trace).

    Raises
    ------
    MixedCalibrationError, CalibrationError
        The points are not in one region with time on its x axis.
    ValueError
        Both points are at the same time.
    """
    a, b = _point(beat, "beat"), _point(next_beat, "next_beat")
    region = region_for_points(_regions(source), (a, b))
    if region.units_x != PhysicalUnits.SECONDS:
        raise CalibrationError(
            f"a heart rate needs a region with time (s) on its x axis; the points lie in "
            f"{_describe(region)}"
        )
    (ta, _), (tb, _) = _physical(region, a), _physical(region, b)
    period = abs(tb - ta)
    if period == 0:
        raise ValueError("both beats are at the same time; pick two consecutive beats")
    return Measurement(
        "heart_rate",
        60.0 / period,
        "/min",
        _coded("heart_rate"),
        (a, b),
        {"period_s": period, "times_s": [ta, tb], "region": _region_info(region)},
    )


def excursion(
    source: Source, p0: Sequence[float], p1: Sequence[float], *, unit: LengthUnit = "mm"
) -> Measurement:
    """Wall excursion: the depth difference between two points of an M-mode strip.

    Only depth counts (the points may be at different times); ``details`` gives both
    times and depths.

    Raises
    ------
    MixedCalibrationError, CalibrationError
        The points are not in one M-mode region calibrated in s by cm.
    """
    a, b = _point(p0, "p0"), _point(p1, "p1")
    region = region_for_points(_regions(source), (a, b))
    if (
        region.spatial_format != RegionSpatialFormat.M_MODE
        or region.units_x != PhysicalUnits.SECONDS
        or region.units_y != PhysicalUnits.CM
    ):
        raise CalibrationError(
            "an excursion needs an M-mode region calibrated in s and cm; the points lie in "
            f"{_describe(region)}"
        )
    factor = _length_factor(unit)
    (ta, da), (tb, db) = _physical(region, a), _physical(region, b)
    return Measurement(
        "excursion",
        abs(db - da) * factor,
        unit,
        None,
        (a, b),
        {
            "times_s": [ta, tb],
            "depths": [da * factor, db * factor],
            "region": _region_info(region),
        },
    )
