"""``doppler_indices`` skips spectral regions it cannot measure, with a reason (no NaN)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.processing_support import Edit, run_edited, set_attributes
from usreview.dicom import read
from usreview.processing import ResultStatus, default_registry
from usreview.simulate import simulate


@pytest.fixture(scope="module")
def pw_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate("pw", tmp_path_factory.mktemp("pw"), seed=0)[0]


def _swap_x(region: Any) -> None:
    region.RegionLocationMinX0, region.RegionLocationMaxX1 = (
        region.RegionLocationMaxX1,
        region.RegionLocationMinX0,
    )


def _past_right_edge(region: Any) -> None:
    region.RegionLocationMaxX1 = region.RegionLocationMaxX1 + 2000


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (set_attributes(PhysicalDeltaX=math.nan), "PhysicalDeltaX is nan"),
        (set_attributes(PhysicalDeltaY=math.nan), "PhysicalDeltaY is nan"),
        (
            set_attributes(ReferencePixelPhysicalValueY=math.nan),
            "ReferencePixelPhysicalValueY is nan",
        ),
        (set_attributes(PhysicalDeltaY=math.inf), "PhysicalDeltaY is inf"),
        (set_attributes(PhysicalDeltaX=-math.inf), "PhysicalDeltaX is -inf"),
        (set_attributes(PhysicalDeltaX=1e-8), "columns are 1e-08 s apart"),
        (set_attributes(PhysicalDeltaX=1e-9), "columns are 1e-09 s apart"),
        (set_attributes(PhysicalDeltaX=1e-4), "shorter than one cardiac cycle"),
        (set_attributes(PhysicalDeltaX=1.0), "more than the 60 s a display can plausibly sweep"),
        (set_attributes(PhysicalDeltaY=1e6), "more than the 10000 cm/s any Doppler display shows"),
        (
            set_attributes(RegionLocationMinX0=700, RegionLocationMaxX1=900),
            "outside the 640 by 480",
        ),
        (_swap_x, "swapped or outside"),
        (_past_right_edge, "swapped or outside"),
        (set_attributes(RegionLocationMaxY1=480), "swapped or outside"),
    ],
)
def test_an_unmeasurable_spectral_region_is_skipped_with_a_reason(
    pw_source: Path, tmp_path: Path, edit: Edit, reason: str
) -> None:
    result = run_edited(pw_source, tmp_path, edit)
    assert result.status == ResultStatus.SKIPPED, result.reason
    assert "spectral region is not usable" in (result.reason or "")
    assert reason in (result.reason or "")


def test_slow_flow_hidden_beyond_the_region_is_not_traced(pw_source: Path, tmp_path: Path) -> None:
    """The baseline 62 rows out hides the diastolic flow (25 cm/s): no false EDV or RI."""

    def edit(region: Any) -> None:
        region.RegionLocationMaxY1 = region.RegionLocationMinY0 + region.ReferencePixelY0 - 62

    result = run_edited(pw_source, tmp_path, edit)
    assert result.status == ResultStatus.SKIPPED, result.output
    assert "outside the spectral region, hiding speeds under" in (result.reason or "")


def test_a_valid_region_gives_finite_evidence(pw_source: Path, tmp_path: Path) -> None:
    result = run_edited(pw_source, tmp_path, lambda region: None)
    assert result.status == ResultStatus.DONE
    for finding in result.output.findings:
        for value in finding.evidence.values():
            assert not isinstance(value, float) or math.isfinite(value), finding


def test_a_velocity_no_patient_can_have_is_a_finding_not_a_number(
    pw_source: Path, tmp_path: Path
) -> None:
    # A plausible-looking calibration twelve times too large: the spectrum now spans some
    # 15 m/s and the PSV reads near 10 m/s, more than blood reaches.
    region = pydicom.dcmread(pw_source).SequenceOfUltrasoundRegions[-1]
    edit = set_attributes(PhysicalDeltaY=12 * float(region.PhysicalDeltaY))
    result = run_edited(pw_source, tmp_path, edit)
    assert result.ok, result.reason
    assert result.output.quantities == ()  # none is reported: they share the calibration
    wrong = {f.evidence["name"]: f for f in result.output.findings if f.code == "implausible_value"}
    assert set(wrong) == {"peak_systolic_velocity", "velocity_time_integral"}
    psv = wrong["peak_systolic_velocity"]
    assert psv.evidence["value"] > 800
    assert psv.evidence["range"] == [0.0, 800.0]
    assert "end_diastolic_velocity" in psv.evidence["withheld"]
    assert psv.text.startswith("Peak Systolic Velocity ") and "calibration" in psv.text
    # The other findings claim no values (they used to say "values are means over ...").
    direction = next(f for f in result.output.findings if f.code == "flow_direction")
    assert "value" not in direction.text and "complete cycle(s) traced" in direction.text
    # The vascular rules never see the withheld values.
    rules = (
        default_registry().get("vascular_rules").run(read(tmp_path / "edited.dcm"), None, [result])
    )
    assert not rules.output.recommendations
