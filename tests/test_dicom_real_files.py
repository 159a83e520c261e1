"""Every real ultrasound file beside the checkout is read as its manifest says."""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
import pytest

from tests.conftest import REAL_FILES, real_file
from usreview.dicom import ImageKind, read

# The kinds each region data type implies (manifest column "US regions").
_REGION_KIND = {1: ImageKind.BMODE, 2: ImageKind.COLOR_FLOW, 10: ImageKind.ECG}
_IDS = [entry["file"] for entry in REAL_FILES]


def _expected_kinds(entry: dict[str, Any]) -> set[ImageKind]:
    kinds = {
        _REGION_KIND[r["RegionDataType"]]
        for r in (entry["regions"] or [])
        if r["RegionDataType"] in _REGION_KIND
    }
    if int(entry.get("NumberOfFrames") or 1) > 1:
        kinds.add(ImageKind.CINE)
    return kinds


@pytest.mark.parametrize("entry", REAL_FILES, ids=_IDS)
def test_header_regions_kinds_and_frames_match_manifest(entry: dict[str, Any]) -> None:
    instance = read(real_file(entry["file"]))
    assert str(instance.sop_class_uid) == entry["SOPClassUID"]
    assert instance.sop_instance_uid == entry["SOPInstanceUID"]
    assert str(instance.transfer_syntax) == entry["TransferSyntaxUID"]
    assert (instance.rows, instance.columns) == (entry["Rows"], entry["Columns"])
    assert instance.number_of_frames == int(entry.get("NumberOfFrames") or 1)
    assert instance.photometric_interpretation == entry["PhotometricInterpretation"]
    assert len(instance.regions) == len(entry["regions"] or [])
    for region, expected in zip(instance.regions, (entry["regions"] or []), strict=True):
        assert region.data_type == expected["RegionDataType"]
        assert region.spatial_format == expected["RegionSpatialFormat"]
        assert region.bounds == (
            expected["RegionLocationMinX0"],
            expected["RegionLocationMinY0"],
            expected["RegionLocationMaxX1"],
            expected["RegionLocationMaxY1"],
        )
        assert region.units_x == expected["PhysicalUnitsXDirection"]
        assert region.units_y == expected["PhysicalUnitsYDirection"]
        assert region.delta_x == pytest.approx(expected["PhysicalDeltaX"])
        assert region.delta_y == pytest.approx(expected["PhysicalDeltaY"])
        assert region.reference_pixel_x0 == expected.get("ReferencePixelX0", 0)
        assert region.reference_pixel_y0 == expected.get("ReferencePixelY0", 0)
        assert region.reference_value_x == pytest.approx(
            expected.get("ReferencePixelPhysicalValueX", 0)
        )
    expected_kinds = _expected_kinds(entry)
    if expected_kinds - {ImageKind.CINE}:
        # Files with regions: the kinds are exactly those the regions (and frames) imply,
        # plus what Image Type's bit map adds.
        assert expected_kinds <= set(instance.kinds)
    else:
        assert ImageKind.BMODE in instance.kinds
        assert any("assumed" in w for w in instance.warnings) or len(entry["ImageType"] or []) >= 4


@pytest.mark.parametrize("entry", REAL_FILES, ids=_IDS)
def test_pixels_decode_lazily_and_display(entry: dict[str, Any]) -> None:
    instance = read(real_file(entry["file"]))
    last = instance.number_of_frames - 1
    frame = instance.frame(last)
    rgb = entry["SamplesPerPixel"] == 3
    assert frame.shape == (entry["Rows"], entry["Columns"], *((3,) if rgb else ()))
    shown = instance.display_frame(last)
    assert shown.dtype == np.uint8
    assert shown.shape[:2] == (entry["Rows"], entry["Columns"])
    if entry["PhotometricInterpretation"] == "PALETTE COLOR":
        assert shown.shape[2] == 3
    assert shown.std() > 5, "a real ultrasound image is not flat"


@pytest.mark.parametrize(
    "entry",
    [e for e in REAL_FILES if e["decode"] == "ok"],
    ids=[e["file"] for e in REAL_FILES if e["decode"] == "ok"],
)
def test_frames_equal_pydicom_reference(entry: dict[str, Any]) -> None:
    """Our lazy frame-by-frame decoding gives pydicom's full decode, frame by frame."""
    instance = read(real_file(entry["file"]))
    reference = pydicom.dcmread(real_file(entry["file"])).pixel_array
    if instance.number_of_frames == 1:
        reference = reference[None]
    for index in sorted({0, instance.number_of_frames // 2, instance.number_of_frames - 1}):
        np.testing.assert_array_equal(instance.frame(index), reference[index])
    if instance.number_of_frames <= 10:
        np.testing.assert_array_equal(instance.frames(), reference)


def test_jpeg_xl_cine_decodes_every_frame_in_colour() -> None:
    instance = read(real_file("dcm4che__will-jxl.dcm"))
    frames = instance.frames()
    assert frames.shape == (27, 708, 1016, 3)
    # Colour flow: some pixels are strongly red or blue, not grey.
    red = (frames[..., 0].astype(int) - frames[..., 2]) > 80
    blue = (frames[..., 2].astype(int) - frames[..., 0]) > 80
    assert red.mean() > 0.005 and blue.mean() > 0.001
    assert instance.timing.frame_time_ms == pytest.approx(47.4359)


def test_ybr_full_422_native_shows_grey_tissue_as_grey() -> None:
    """Subsampled YBR stored natively: converted to RGB, tissue comes out grey, not green."""
    frame = read(real_file("cornerstone3d__US-YBR_FULL_422-EVRLE.dcm")).display_frame()
    tissue = frame[200:400, 300:600].astype(int)
    assert np.abs(tissue[..., 0] - tissue[..., 1]).mean() < 3
    assert np.abs(tissue[..., 2] - tissue[..., 1]).mean() < 3


def test_sixteen_bit_segmented_palette_is_shown_in_eight_bits() -> None:
    instance = read(real_file("pydicom-data__gdcm-US-ALOKA-16.dcm"))
    assert instance.frame().dtype == np.uint16
    shown = instance.display_frame()
    assert shown.shape == (480, 640, 3) and shown.max() > 200


def test_frame_timing_from_frame_time() -> None:
    instance = read(real_file("pydicom-data__color3d_jpeg_baseline.dcm"))
    assert instance.timing.frame_time_ms == pytest.approx(33.333)
    assert instance.timing.frame_rate == pytest.approx(30.0, abs=0.01)
    assert instance.timing.offsets_ms is not None
    assert instance.timing.offsets_ms[-1] == pytest.approx(119 * 33.333)
