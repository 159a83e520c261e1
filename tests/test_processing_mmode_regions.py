"""``mmode_motion`` skips M-mode regions it cannot measure, with a reason (no crash, no stall)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from usreview.dicom import read
from usreview.processing import ResultStatus, default_registry
from usreview.simulate import simulate

Edit = Callable[[Any], None]


@pytest.fixture(scope="module")
def mmode_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate("mmode", tmp_path_factory.mktemp("mmode"), seed=0)[0]


def _set(**values: Any) -> Edit:
    def edit(region: Any) -> None:
        for keyword, value in values.items():
            setattr(region, keyword, value)

    return edit


def _swap_y(region: Any) -> None:
    region.RegionLocationMinY0, region.RegionLocationMaxY1 = (
        region.RegionLocationMaxY1,
        region.RegionLocationMinY0,
    )


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_set(PhysicalDeltaX=math.nan), "PhysicalDeltaX is nan"),
        (_set(PhysicalDeltaY=math.nan), "PhysicalDeltaY is nan"),
        (_set(PhysicalDeltaX=math.inf), "PhysicalDeltaX is inf"),
        (_set(PhysicalDeltaX=1e-6), "columns are 1e-06 s apart"),
        (_set(PhysicalDeltaX=1e-4), "shorter than one cardiac cycle"),
        (_set(PhysicalDeltaY=1e-6), "less than the 1 cm of a heart"),
        (_set(PhysicalDeltaY=1e6), "more than any ultrasound image"),
        (_set(PhysicalDeltaX=1.0), "more than the 60 s a display can plausibly sweep"),
        (_set(RegionLocationMinX0=700, RegionLocationMaxX1=900), "outside the 640 by 480"),
        (_swap_y, "swapped or outside"),
        (_set(RegionLocationMaxY1=600), "swapped or outside"),
    ],
)
def test_an_unmeasurable_mmode_region_is_skipped_with_a_reason(
    mmode_source: Path, tmp_path: Path, edit: Edit, reason: str
) -> None:
    ds = pydicom.dcmread(mmode_source)
    edit(ds.SequenceOfUltrasoundRegions[-1])
    path = tmp_path / "edited.dcm"
    ds.save_as(path)
    result = default_registry().get("mmode_motion").run(read(path))
    assert result.status == ResultStatus.SKIPPED, result.reason
    assert "M-mode region is not usable" in (result.reason or "")
    assert reason in (result.reason or "")
