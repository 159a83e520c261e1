"""``mmode_motion`` skips M-mode regions it cannot measure, with a reason (no crash, no stall)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.processing_support import Edit, run_edited, set_attributes
from usreview.processing import ResultStatus
from usreview.simulate import simulate


@pytest.fixture(scope="module")
def mmode_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate("mmode", tmp_path_factory.mktemp("mmode"), seed=0)[0]


def _swap_y(region: Any) -> None:
    region.RegionLocationMinY0, region.RegionLocationMaxY1 = (
        region.RegionLocationMaxY1,
        region.RegionLocationMinY0,
    )


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (set_attributes(PhysicalDeltaX=math.nan), "PhysicalDeltaX is nan"),
        (set_attributes(PhysicalDeltaY=math.nan), "PhysicalDeltaY is nan"),
        (set_attributes(PhysicalDeltaX=math.inf), "PhysicalDeltaX is inf"),
        (set_attributes(PhysicalDeltaX=1e-6), "columns are 1e-06 s apart"),
        (set_attributes(PhysicalDeltaX=1e-4), "shorter than one cardiac cycle"),
        (set_attributes(PhysicalDeltaY=1e-6), "less than the 1 cm of a heart"),
        (set_attributes(PhysicalDeltaY=1e6), "more than any ultrasound image"),
        (set_attributes(PhysicalDeltaX=1.0), "more than the 60 s a display can plausibly sweep"),
        (
            set_attributes(RegionLocationMinX0=700, RegionLocationMaxX1=900),
            "outside the 640 by 480",
        ),
        (_swap_y, "swapped or outside"),
        (set_attributes(RegionLocationMaxY1=600), "swapped or outside"),
    ],
)
def test_an_unmeasurable_mmode_region_is_skipped_with_a_reason(
    mmode_source: Path, tmp_path: Path, edit: Edit, reason: str
) -> None:
    result = run_edited(mmode_source, tmp_path, edit, "mmode_motion")
    assert result.status == ResultStatus.SKIPPED, result.reason
    assert "M-mode region is not usable" in (result.reason or "")
    assert reason in (result.reason or "")
