"""The Sequence of Ultrasound Regions (0018,6011) as typed, calibrated objects.

A region maps pixels to physical values with::

    physical = ReferencePixelPhysicalValue
               + (pixel - (RegionLocationMin + ReferencePixel0)) * PhysicalDelta

The reference pixel is relative to the region's top-left corner and its physical value is not
always zero (the baseline of a spectral Doppler region, a depth offset): dropping either term
is the calibration bug viewers keep making. Deltas may be negative (velocity grows upward).

A region read without a Physical Delta keeps 0 in its place (with a warning) and remembers the
keyword in :attr:`UltrasoundRegion.missing`; :func:`region_for_points` refuses any region whose
axis has physical units but no finite, non-zero pixel size, so a caliper never reads 0 or part
of a distance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from usreview.dicom.enum import (
    PhysicalUnits,
    RegionDataType,
    RegionFlags,
    RegionSpatialFormat,
    ScrollingType,
)
from usreview.errors import CalibrationError, MixedCalibrationError

__all__ = ["UltrasoundRegion", "distance", "read_regions", "region_for_points"]

Point = tuple[float, float]


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions.

    Pixel coordinates are (x = column, y = row) of the whole image, with the region's corners
    inclusive as in DICOM. ``reference_pixel_x0/y0`` are relative to the region's top-left.
    ``missing`` holds the keywords of required attributes that were absent and replaced by a
    neutral value (``PhysicalDeltaY`` read as 0); it takes no part in equality.
    """

    spatial_format: RegionSpatialFormat
    data_type: RegionDataType
    flags: RegionFlags
    min_x0: int
    min_y0: int
    max_x1: int
    max_y1: int
    units_x: PhysicalUnits
    units_y: PhysicalUnits
    delta_x: float
    delta_y: float
    reference_pixel_x0: int = 0
    reference_pixel_y0: int = 0
    reference_value_x: float = 0.0
    reference_value_y: float = 0.0
    transducer_frequency_khz: float | None = None
    pulse_repetition_frequency_hz: float | None = None
    doppler_correction_angle_deg: float | None = None
    steering_angle_deg: float | None = None
    missing: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    # --- geometry -------------------------------------------------------------------

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """``(min_x0, min_y0, max_x1, max_y1)``, corners inclusive."""
        return (self.min_x0, self.min_y0, self.max_x1, self.max_y1)

    def deltas_problem(self) -> str | None:
        """Why the physical deltas cannot calibrate the region (zero, not finite), or ``None``."""
        for keyword, delta in (("PhysicalDeltaX", self.delta_x), ("PhysicalDeltaY", self.delta_y)):
            if keyword in self.missing:
                return f"its {keyword} is missing; it must be finite and non-zero"
            if not math.isfinite(delta) or delta == 0:
                return f"its {keyword} is {delta:g}; it must be finite and non-zero"
        return None

    def calibration_problem(self) -> str | None:
        """Why the region cannot calibrate a measurement, as a sentence, or ``None``.

        Every axis with physical units needs a pixel size (Physical Delta) that is present,
        finite and non-zero; an axis without units (the amplitude of an ECG trace) is not
        measured and needs none.
        """
        axes = (
            ("horizontal", "PhysicalDeltaX", self.units_x, self.delta_x),
            ("vertical", "PhysicalDeltaY", self.units_y, self.delta_y),
        )
        for axis, keyword, units, delta in axes:
            if units == PhysicalUnits.NONE:
                continue
            if keyword in self.missing:
                found = f"has no {axis} pixel size ({keyword})"
            elif not math.isfinite(delta) or delta == 0:
                found = f"has a {axis} pixel size ({keyword}) of {delta:g}"
            else:
                continue
            return (
                f"the {self.data_type.name.lower()} region at {list(self.bounds)} {found}, "
                "so it cannot calibrate a measurement"
            )
        return None

    def bounds_problem(self, rows: int, columns: int) -> str | None:
        """Why the region does not lie inside a ``columns`` x ``rows`` image, or ``None``."""
        x0, y0, x1, y1 = self.bounds
        if 0 <= x0 <= x1 < columns and 0 <= y0 <= y1 < rows:
            return None
        return (
            f"its bounds (x {x0} to {x1}, y {y0} to {y1}) are swapped or outside "
            f"the {columns} by {rows} image"
        )

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.max_x1 - self.min_x0 + 1

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.max_y1 - self.min_y0 + 1

    @property
    def scrolling(self) -> ScrollingType:
        """How a time-based region is updated on screen (bits 3-4 of Region Flags)."""
        return ScrollingType((int(self.flags) >> 3) & 0x3)

    def contains(self, x: float, y: float) -> bool:
        """Whether pixel ``(x, y)`` lies in the region (corners inclusive)."""
        return self.min_x0 <= x <= self.max_x1 and self.min_y0 <= y <= self.max_y1

    # --- calibration ----------------------------------------------------------------

    @property
    def origin_x(self) -> float:
        """Image column of the reference pixel."""
        return float(self.min_x0 + self.reference_pixel_x0)

    @property
    def origin_y(self) -> float:
        """Image row of the reference pixel."""
        return float(self.min_y0 + self.reference_pixel_y0)

    def to_physical(
        self, x: npt.ArrayLike, y: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Physical values (in :attr:`units_x`, :attr:`units_y`) of image pixels ``(x, y)``."""
        px = (
            self.reference_value_x
            + (np.asarray(x, dtype=np.float64) - self.origin_x) * self.delta_x
        )
        py = (
            self.reference_value_y
            + (np.asarray(y, dtype=np.float64) - self.origin_y) * self.delta_y
        )
        return px, py

    def to_pixel(
        self, px: npt.ArrayLike, py: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Image pixel coordinates of physical values; the inverse of :meth:`to_physical`."""
        if self.delta_x == 0 or self.delta_y == 0:
            raise CalibrationError(
                f"region {self.data_type.name} has a zero physical delta; it cannot be inverted"
            )
        x = (
            self.origin_x
            + (np.asarray(px, dtype=np.float64) - self.reference_value_x) / self.delta_x
        )
        y = (
            self.origin_y
            + (np.asarray(py, dtype=np.float64) - self.reference_value_y) / self.delta_y
        )
        return x, y

    def same_calibration(self, other: UltrasoundRegion, *, rel_tol: float = 1e-6) -> bool:
        """Whether both regions map every pixel to the same physical value (same affine map)."""
        if (self.units_x, self.units_y) != (other.units_x, other.units_y):
            return False
        for a, b in ((self.delta_x, other.delta_x), (self.delta_y, other.delta_y)):
            if not math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12):
                return False
        # The physical value of image pixel (0, 0) must agree.
        ax, ay = self.to_physical(0.0, 0.0)
        bx, by = other.to_physical(0.0, 0.0)
        scale = max(abs(self.delta_x), abs(self.delta_y), 1e-12)
        return bool(abs(ax - bx) <= 1e-3 * scale and abs(ay - by) <= 1e-3 * scale)

    # --- construction ---------------------------------------------------------------

    @classmethod
    def from_dataset(cls, item: Any, warnings: list[str] | None = None) -> UltrasoundRegion:
        """Build a region from one item of the sequence, tolerating missing optional values.

        Missing required attributes are replaced by neutral values and reported in ``warnings``.
        """
        notes = warnings if warnings is not None else []
        missing: set[str] = set()

        def get(keyword: str, default: Any, required: bool = False) -> Any:
            value = getattr(item, keyword, None)
            if value is None or value == "":
                if required:
                    notes.append(f"ultrasound region without {keyword}; assumed {default!r}")
                    missing.add(keyword)
                return default
            return value

        return cls(
            spatial_format=_enum(RegionSpatialFormat, get("RegionSpatialFormat", 0, True), notes),
            data_type=_enum(RegionDataType, get("RegionDataType", 0, True), notes),
            flags=RegionFlags(int(get("RegionFlags", 0, True)) & 0x1F),
            min_x0=int(get("RegionLocationMinX0", 0, True)),
            min_y0=int(get("RegionLocationMinY0", 0, True)),
            max_x1=int(get("RegionLocationMaxX1", 0, True)),
            max_y1=int(get("RegionLocationMaxY1", 0, True)),
            units_x=_enum(PhysicalUnits, get("PhysicalUnitsXDirection", 0, True), notes),
            units_y=_enum(PhysicalUnits, get("PhysicalUnitsYDirection", 0, True), notes),
            delta_x=float(get("PhysicalDeltaX", 0.0, True)),
            delta_y=float(get("PhysicalDeltaY", 0.0, True)),
            reference_pixel_x0=int(get("ReferencePixelX0", 0)),
            reference_pixel_y0=int(get("ReferencePixelY0", 0)),
            reference_value_x=float(get("ReferencePixelPhysicalValueX", 0.0)),
            reference_value_y=float(get("ReferencePixelPhysicalValueY", 0.0)),
            transducer_frequency_khz=_optional_float(get("TransducerFrequency", None)),
            pulse_repetition_frequency_hz=_optional_float(get("PulseRepetitionFrequency", None)),
            doppler_correction_angle_deg=_optional_float(get("DopplerCorrectionAngle", None)),
            steering_angle_deg=_optional_float(get("SteeringAngle", None)),
            missing=frozenset(missing),
        )

    def to_dataset(self) -> Dataset:
        """The region as a Sequence of Ultrasound Regions item (for writing)."""
        item = Dataset()
        item.RegionSpatialFormat = int(self.spatial_format)
        item.RegionDataType = int(self.data_type)
        item.RegionFlags = int(self.flags)
        item.RegionLocationMinX0 = self.min_x0
        item.RegionLocationMinY0 = self.min_y0
        item.RegionLocationMaxX1 = self.max_x1
        item.RegionLocationMaxY1 = self.max_y1
        item.ReferencePixelX0 = self.reference_pixel_x0
        item.ReferencePixelY0 = self.reference_pixel_y0
        item.PhysicalUnitsXDirection = int(self.units_x)
        item.PhysicalUnitsYDirection = int(self.units_y)
        item.ReferencePixelPhysicalValueX = float(self.reference_value_x)
        item.ReferencePixelPhysicalValueY = float(self.reference_value_y)
        item.PhysicalDeltaX = float(self.delta_x)
        item.PhysicalDeltaY = float(self.delta_y)
        optional = {
            "TransducerFrequency": self.transducer_frequency_khz,
            "PulseRepetitionFrequency": self.pulse_repetition_frequency_hz,
            "DopplerCorrectionAngle": self.doppler_correction_angle_deg,
            "SteeringAngle": self.steering_angle_deg,
        }
        for keyword, value in optional.items():
            if value is not None:
                setattr(item, keyword, int(value) if keyword.endswith("Frequency") else value)
        return item

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description (enum names, bounds, calibration)."""
        return {
            "data_type": self.data_type.name.lower(),
            "spatial_format": self.spatial_format.name.lower(),
            "flags": int(self.flags),
            "bounds": list(self.bounds),
            "units": [self.units_x.ucum, self.units_y.ucum],
            "deltas": [self.delta_x, self.delta_y],
            "reference_pixel": [self.reference_pixel_x0, self.reference_pixel_y0],
            "reference_value": [self.reference_value_x, self.reference_value_y],
            "transducer_frequency_khz": self.transducer_frequency_khz,
            "pulse_repetition_frequency_hz": self.pulse_repetition_frequency_hz,
            "doppler_correction_angle_deg": self.doppler_correction_angle_deg,
        }


def _enum(kind: Any, value: Any, notes: list[str]) -> Any:
    try:
        return kind(int(value))
    except (TypeError, ValueError):
        notes.append(f"unknown {kind.__name__} value {value!r}; treated as NONE")
        return kind(0)


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def read_regions(dataset: Any, warnings: list[str] | None = None) -> tuple[UltrasoundRegion, ...]:
    """The regions of a dataset's Sequence of Ultrasound Regions, in stored order (may be empty)."""
    items = getattr(dataset, "SequenceOfUltrasoundRegions", None) or []
    return tuple(UltrasoundRegion.from_dataset(item, warnings) for item in items)


def region_for_points(
    regions: Sequence[UltrasoundRegion], points: Iterable[Point]
) -> UltrasoundRegion:
    """The region that calibrates all ``points`` (image ``(x, y)`` pixels).

    The smallest high-priority region containing every point wins. When the points fall in
    different regions, those regions must share one calibration, otherwise the measurement is
    refused with :class:`MixedCalibrationError`. A point outside every region, a region
    without physical units, or a region that cannot calibrate
    (:meth:`UltrasoundRegion.calibration_problem`: a pixel size missing, zero or not finite)
    raises :class:`CalibrationError`; the last is checked before regions are compared.
    """
    pts = list(points)
    if not pts:
        raise CalibrationError("no points to measure")
    if not regions:
        raise CalibrationError("the image has no ultrasound regions: it carries no calibration")

    def rank(r: UltrasoundRegion) -> tuple[int, int]:
        return (int(RegionFlags.LOW_PRIORITY in r.flags), r.width * r.height)

    per_point: list[UltrasoundRegion] = []
    for x, y in pts:
        holding = sorted((r for r in regions if r.contains(x, y)), key=rank)
        if not holding:
            raise CalibrationError(f"point ({x:g}, {y:g}) lies outside every ultrasound region")
        per_point.append(holding[0])

    common = sorted(
        (r for r in regions if all(r.contains(x, y) for x, y in pts)),
        key=rank,
    )
    chosen = common[0] if common else per_point[0]
    for region in (chosen, *per_point):
        problem = region.calibration_problem()
        if problem is not None:
            raise CalibrationError(problem)
    for other in per_point:
        if other is not chosen and not chosen.same_calibration(other):
            raise MixedCalibrationError(
                "the points fall in ultrasound regions of different calibration "
                f"({chosen.data_type.name.lower()} at {list(chosen.bounds)} and "
                f"{other.data_type.name.lower()} at {list(other.bounds)}); "
                "measure within one region"
            )
    if chosen.units_x == PhysicalUnits.NONE and chosen.units_y == PhysicalUnits.NONE:
        raise CalibrationError("the region holding the points has no physical units")
    return chosen


def distance(
    regions: Sequence[UltrasoundRegion], p1: Point, p2: Point
) -> tuple[float, PhysicalUnits]:
    """Physical distance between two image points and its unit.

    Both axes of the calibrating region must share one unit (a B-mode region in cm); for a
    time/velocity display, measure each axis separately with :meth:`UltrasoundRegion.to_physical`.
    """
    region = region_for_points(regions, (p1, p2))
    if region.units_x != region.units_y:
        raise CalibrationError(
            f"a distance needs one unit on both axes; this region has "
            f"{region.units_x.ucum} by {region.units_y.ucum}"
        )
    (x1, x2), (y1, y2) = region.to_physical([p1[0], p2[0]], [p1[1], p2[1]])
    return float(math.hypot(x2 - x1, y2 - y1)), region.units_x
