"""Pixel-to-physical conversion, region choice and refusal of mixed calibrations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from tests.conftest import real_file, region_item
from usreview.dicom import (
    PhysicalUnits,
    RegionDataType,
    UltrasoundRegion,
    distance,
    read,
    read_regions,
    region_for_points,
)
from usreview.dicom.enum import RegionFlags, RegionSpatialFormat, ScrollingType
from usreview.errors import CalibrationError, MixedCalibrationError


def _region(**values: object) -> UltrasoundRegion:
    return UltrasoundRegion.from_dataset(region_item(**values))


def test_reference_pixel_is_relative_to_region_and_reference_value_is_added() -> None:
    # A spectral region: baseline at row 20 of the region (image row 320), velocity up is
    # positive (negative delta), time 0 at column 10 of the region, reference value 0.5 s.
    region = _region(
        RegionSpatialFormat=3,
        RegionDataType=3,
        RegionLocationMinX0=100,
        RegionLocationMinY0=300,
        RegionLocationMaxX1=599,
        RegionLocationMaxY1=479,
        PhysicalUnitsXDirection=4,
        PhysicalUnitsYDirection=7,
        PhysicalDeltaX=0.004,
        PhysicalDeltaY=-1.5,
        ReferencePixelX0=10,
        ReferencePixelY0=20,
        ReferencePixelPhysicalValueX=0.5,
        ReferencePixelPhysicalValueY=0.0,
    )
    t, v = region.to_physical([110, 160], [320, 300])
    assert t.tolist() == pytest.approx([0.5, 0.5 + 50 * 0.004])
    assert v.tolist() == pytest.approx([0.0, 30.0])  # 20 rows above baseline = +30 cm/s
    assert region.units_x == PhysicalUnits.SECONDS and region.units_y.ucum == "cm/s"


_deltas = st.floats(min_value=1e-4, max_value=10, allow_nan=False) | st.floats(
    min_value=-10, max_value=-1e-4, allow_nan=False
)


@given(
    x0=st.integers(0, 2000),
    y0=st.integers(0, 2000),
    rx=st.integers(-500, 500),
    ry=st.integers(-500, 500),
    vx=st.floats(-1e3, 1e3),
    vy=st.floats(-1e3, 1e3),
    dx=_deltas,
    dy=_deltas,
    px=st.floats(0, 4000),
    py=st.floats(0, 4000),
)
def test_to_pixel_inverts_to_physical(
    x0: int,
    y0: int,
    rx: int,
    ry: int,
    vx: float,
    vy: float,
    dx: float,
    dy: float,
    px: float,
    py: float,
) -> None:
    region = _region(
        RegionLocationMinX0=x0,
        RegionLocationMinY0=y0,
        RegionLocationMaxX1=x0 + 100,
        RegionLocationMaxY1=y0 + 100,
        ReferencePixelX0=rx,
        ReferencePixelY0=ry,
        ReferencePixelPhysicalValueX=vx,
        ReferencePixelPhysicalValueY=vy,
        PhysicalDeltaX=dx,
        PhysicalDeltaY=dy,
    )
    # The reference pixel maps exactly onto the reference value.
    ox, oy = region.to_physical(x0 + rx, y0 + ry)
    assert float(ox) == pytest.approx(vx) and float(oy) == pytest.approx(vy)
    phys = region.to_physical(px, py)
    back = region.to_pixel(*phys)
    assert float(back[0]) == pytest.approx(px, abs=1e-6 * max(1.0, abs(px)) + 1e-6)
    assert float(back[1]) == pytest.approx(py, abs=1e-6 * max(1.0, abs(py)) + 1e-6)


@given(
    d=st.floats(1e-3, 1.0),
    a=st.tuples(st.integers(0, 63), st.integers(0, 47)),
    b=st.tuples(st.integers(0, 63), st.integers(0, 47)),
    ref=st.floats(-50, 50),
)
def test_distance_is_pixel_distance_times_delta_whatever_the_reference(
    d: float, a: tuple[int, int], b: tuple[int, int], ref: float
) -> None:
    regions = [_region(PhysicalDeltaX=d, PhysicalDeltaY=-d, ReferencePixelPhysicalValueX=ref)]
    value, unit = distance(regions, a, b)
    assert unit == PhysicalUnits.CM
    assert value == pytest.approx(math.dist(a, b) * d)


def test_points_in_two_side_by_side_images_are_refused() -> None:
    """ALOKA's dual B-mode: two tissue regions, same deltas, different origins."""
    instance = read(real_file("pydicom-data__gdcm-US-ALOKA-16.dcm"))
    left, right, _bar = instance.regions
    assert left.delta_x == right.delta_x
    assert not left.same_calibration(right)
    with pytest.raises(MixedCalibrationError, match="different calibration"):
        distance(instance.regions, (100, 200), (400, 200))
    # Within the left image the distance is calibrated: 60 px * 0.0382653 cm.
    value, _ = distance(instance.regions, (100, 200), (160, 200))
    assert value == pytest.approx(60 * 0.0382653, rel=1e-5)
    # A point on the annotation bar at the top lies in no region.
    with pytest.raises(CalibrationError, match="outside every"):
        distance(instance.regions, (100, 5), (100, 200))


def test_overlapping_regions_of_one_calibration_are_one_measurement() -> None:
    tissue = _region(RegionLocationMaxX1=199, RegionLocationMaxY1=199, ReferencePixelX0=100)
    color = _region(
        RegionDataType=2,
        RegionLocationMinX0=50,
        RegionLocationMinY0=50,
        RegionLocationMaxX1=120,
        RegionLocationMaxY1=120,
        ReferencePixelX0=50,  # same image pixel (100, 0) as the tissue region's reference
        ReferencePixelY0=-50,
    )
    assert tissue.same_calibration(color)
    # Both points in the colour box: the smaller region is chosen.
    assert region_for_points([tissue, color], [(60, 60), (100, 100)]) is color
    # One point outside the colour box: the tissue region holds both.
    assert region_for_points([tissue, color], [(60, 60), (150, 150)]) is tissue


def test_region_with_other_units_is_no_distance() -> None:
    spectral = _region(PhysicalUnitsXDirection=4, PhysicalUnitsYDirection=7)
    with pytest.raises(CalibrationError, match="one unit on both axes"):
        distance([spectral], (1, 1), (5, 5))
    with pytest.raises(CalibrationError, match="no ultrasound regions"):
        distance([], (1, 1), (5, 5))


def test_low_priority_region_loses_to_high_priority() -> None:
    low = _region(RegionFlags=1, RegionLocationMaxX1=20, RegionLocationMaxY1=20)
    high = _region(RegionLocationMaxX1=40, RegionLocationMaxY1=40)
    assert region_for_points([low, high], [(5, 5)]) is high


def test_flags_and_enums_are_typed() -> None:
    region = _region(RegionFlags=0b10110, RegionSpatialFormat=2, RegionDataType=0x0E)
    assert RegionFlags.SCALING_PROTECTED in region.flags
    assert RegionFlags.FREQUENCY_SCALE in region.flags
    assert region.scrolling == ScrollingType.SWEEPING
    assert region.spatial_format == RegionSpatialFormat.M_MODE
    assert region.data_type == RegionDataType.COLOR_BAR


def test_missing_and_unknown_values_are_tolerated_with_warnings() -> None:
    item = region_item(RegionDataType=0x77)
    del item.PhysicalDeltaY
    notes: list[str] = []

    holder = Dataset()
    holder.SequenceOfUltrasoundRegions = [item]
    (region,) = read_regions(holder, notes)
    assert region.data_type == RegionDataType.NONE
    assert region.delta_y == 0.0
    assert region.missing == {"PhysicalDeltaY"}
    assert (
        region.deltas_problem() == "its PhysicalDeltaY is missing; it must be finite and non-zero"
    )
    assert any("PhysicalDeltaY" in n for n in notes)
    assert any("RegionDataType" in n for n in notes)
    with pytest.raises(CalibrationError, match="zero physical delta"):
        region.to_pixel(1.0, 1.0)


def test_vectorised_conversion() -> None:
    region = _region(ReferencePixelX0=3, ReferencePixelY0=4, ReferencePixelPhysicalValueY=1.0)
    xs, ys = region.to_physical(np.arange(5), np.arange(5))
    assert xs.shape == (5,) and ys[4] == pytest.approx(1.0)


def _without(*keywords: str, **values: object) -> UltrasoundRegion:
    """A 400 x 300 B-mode region at 0.02 cm per pixel, without the attributes ``keywords``."""
    item = region_item(**{"RegionLocationMaxX1": 399, "RegionLocationMaxY1": 299, **values})
    for keyword in keywords:
        delattr(item, keyword)
    return UltrasoundRegion.from_dataset(item, [])


def test_a_missing_pixel_size_refuses_the_measurement_instead_of_reading_zero() -> None:
    """The audit's calipers: 22.36 mm with a complete region; 10.00 mm (diagonal) and
    0.00 mm (vertical) when PhysicalDeltaY was missing and read as 0."""
    assert distance([_without()], (100, 100), (150, 200))[0] == pytest.approx(
        50 * math.sqrt(5) * 0.02
    )
    no_y = [_without("PhysicalDeltaY")]
    for end in ((150, 200), (100, 200), (150, 100)):  # diagonal, vertical, even horizontal
        with pytest.raises(CalibrationError) as caught:
            distance(no_y, (100, 100), end)
        assert str(caught.value) == (
            "the tissue region at [0, 0, 399, 299] has no vertical pixel size "
            "(PhysicalDeltaY), so it cannot calibrate a measurement"
        )
        assert not isinstance(caught.value, MixedCalibrationError)
    with pytest.raises(CalibrationError, match=r"no horizontal pixel size \(PhysicalDeltaX\)"):
        region_for_points([_without("PhysicalDeltaX")], [(100, 100)])


@pytest.mark.parametrize(
    ("delta", "shown"), [(0.0, "0"), (math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")]
)
def test_a_zero_or_non_finite_pixel_size_is_refused_with_its_reason(
    delta: float, shown: str
) -> None:
    """Before: 0 read a number; NaN was refused as "different calibration (tissue at [...]
    and tissue at [...])", naming one region twice."""
    bad = _without(PhysicalDeltaY=delta)
    reason = (
        rf"the tissue region at \[0, 0, 399, 299\] has a vertical pixel size "
        rf"\(PhysicalDeltaY\) of {shown}, so it cannot calibrate a measurement"
    )
    with pytest.raises(CalibrationError, match=reason) as caught:
        distance([bad], (100, 100), (150, 200))
    assert not isinstance(caught.value, MixedCalibrationError)
    # A point in a calibrated region and one in the broken region: the broken region is
    # named, before any comparison of calibrations.
    good = _without(RegionLocationMinX0=400, RegionLocationMaxX1=799)
    with pytest.raises(CalibrationError, match=reason) as caught:
        region_for_points([good, bad], [(500, 100), (100, 100)])
    assert not isinstance(caught.value, MixedCalibrationError)
