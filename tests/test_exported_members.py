"""The public API is small and pinned (as httpx does)."""

from __future__ import annotations

import usreview
import usreview.dicom
import usreview.errors


def test_dicom_exports() -> None:
    assert set(usreview.dicom.__all__) == {
        "DEFAULT_MAX_DECODED_BYTES",
        "ULTRASOUND_SOP_CLASSES",
        "FrameTiming",
        "ImageKind",
        "PhysicalUnits",
        "RegionDataType",
        "RegionFlags",
        "RegionSpatialFormat",
        "ScrollingType",
        "Series",
        "Study",
        "UltrasoundInstance",
        "UltrasoundRegion",
        "distance",
        "group_studies",
        "iter_dicom_paths",
        "read",
        "read_regions",
        "region_for_points",
    }
    for name in usreview.dicom.__all__:
        assert hasattr(usreview.dicom, name)


def test_every_error_derives_from_the_root() -> None:
    for name in usreview.errors.__all__:
        error = getattr(usreview.errors, name)
        assert issubclass(error, usreview.errors.UsreviewError)
        assert name in (usreview.errors.__doc__ or "")
