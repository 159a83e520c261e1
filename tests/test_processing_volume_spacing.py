"""Where a volume's slice spacing comes from: the frames' positions along the slice normal,
checked against a declared Spacing Between Slices, never Slice Thickness.

Each case edits one simulated Enhanced US Volume (6.22 mL, 0.6 mm voxels, frames 0.6 mm apart
in Image Position (Volume)) with pydicom and checks the reader's spacing and the processor's
volume against the truth, or its reason for refusing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.processing_support import SMALL_VOLUME
from usreview.dicom import UltrasoundInstance, read
from usreview.processing import ProcessorResult, ResultStatus, default_registry
from usreview.simulate import simulate


def _run(
    tmp_path: Path, edit: Callable[[Dataset], None]
) -> tuple[float, UltrasoundInstance, ProcessorResult]:
    """The true volume (mL), the edited instance and the processor's result on it."""
    path = simulate("volume", tmp_path, seed=3, snr_db=25.0, **SMALL_VOLUME)[0]
    truth = json.loads(path.with_suffix(".truth.json").read_text())["ellipsoid"]["volume_ml"]
    ds = dcmread(path)
    edit(ds)
    ds.save_as(path)
    instance = read(path)
    return float(truth), instance, default_registry().get("volume").run(instance)


def _measures(ds: Dataset) -> Dataset:
    measures: Dataset = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    return measures


def _volume(result: ProcessorResult) -> float:
    assert result.status == ResultStatus.DONE, result.reason
    return float(result.output.quantities[0].value)


def _thickness_only(thickness: float) -> Callable[[Dataset], None]:
    """No Spacing Between Slices; Slice Thickness (the slab a slice images) ``thickness``."""

    def edit(ds: Dataset) -> None:
        del _measures(ds).SpacingBetweenSlices
        _measures(ds).SliceThickness = thickness

    return edit


def test_slice_thickness_is_not_the_spacing_the_positions_are(tmp_path: Path) -> None:
    """A 1.5 mm thick slab every 0.6 mm: before, 1.5 mm was taken as the spacing (+149%)."""
    truth, instance, result = _run(tmp_path, _thickness_only(1.5))
    assert instance.voxel_spacing_mm == pytest.approx((0.6, 0.6, 0.6))
    assert _volume(result) == pytest.approx(truth, rel=0.05)


def test_a_declared_spacing_the_positions_contradict_is_refused(tmp_path: Path) -> None:
    """Spacing Between Slices 1.0 mm on frames 0.6 mm apart: before, +65%."""

    def edit(ds: Dataset) -> None:
        _measures(ds).SpacingBetweenSlices = 1.0

    _, instance, result = _run(tmp_path, edit)
    assert instance.voxel_spacing_mm is None
    assert result.status == ResultStatus.SKIPPED
    assert result.reason == (
        "the Spacing Between Slices (1 mm) disagrees with the 0.6 mm between the frames' "
        "Image Position (Volume) along the slice normal"
    )


def test_a_declared_spacing_within_1_percent_gives_way_to_the_positions(tmp_path: Path) -> None:
    """0.603 mm declared on frames 0.6 mm apart: accepted, the positions' step is used.
    Before: 0.603 mm."""

    def edit(ds: Dataset) -> None:
        _measures(ds).SpacingBetweenSlices = 0.603

    truth, instance, result = _run(tmp_path, edit)
    assert instance.voxel_spacing_mm is not None
    assert instance.voxel_spacing_mm[0] == pytest.approx(0.6, abs=1e-9)
    assert _volume(result) == pytest.approx(truth, rel=0.05)


def test_without_spacing_or_positions_the_volume_is_refused(tmp_path: Path) -> None:
    """Only Slice Thickness is left: the spacing is unknown. Before: measured with it (right
    here only because this simulator makes slices as thick as their spacing)."""

    def edit(ds: Dataset) -> None:
        _thickness_only(0.6)(ds)
        for frame in ds.PerFrameFunctionalGroupsSequence:
            del frame.PlanePositionVolumeSequence

    _, instance, result = _run(tmp_path, edit)
    assert result.status == ResultStatus.SKIPPED
    assert result.reason is not None
    assert result.reason.startswith("the slice spacing is unknown: no Spacing Between Slices")
    assert "Slice Thickness is the thickness of a slice" in result.reason
    assert instance.voxel_spacing_mm is None


def test_the_spacing_is_measured_along_the_slice_normal(tmp_path: Path) -> None:
    """Oblique patient planes whose origins also slide 0.3 mm along the rows at each step: the
    frames are 0.6 mm apart along the normal (0.67 mm apart in space). The direction cosines are
    written to 2 decimals, as some scanners do (the normal 0.35% too long). No Spacing Between
    Slices, a 2 mm Slice Thickness: before, 2 mm was the spacing (3.3 times the volume)."""
    angle = math.radians(30.0)
    row, column = (1.0, 0.0, 0.0), (0.0, math.cos(angle), math.sin(angle))
    normal = (0.0, -math.sin(angle), math.cos(angle))

    def edit(ds: Dataset) -> None:
        _thickness_only(2.0)(ds)
        orientation = Dataset()
        orientation.ImageOrientationPatient = [round(c, 2) for c in (*row, *column)]
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = [orientation]
        for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
            del frame.PlanePositionVolumeSequence
            position = Dataset()
            position.ImagePositionPatient = [
                round(10.0 + 0.3 * k * r + 0.6 * k * n, 6) for r, n in zip(row, normal, strict=True)
            ]
            frame.PlanePositionSequence = [position]

    truth, instance, result = _run(tmp_path, edit)
    assert instance.voxel_spacing_mm == pytest.approx((0.6, 0.6, 0.6), rel=1e-4)
    assert instance.slice_positions_mm is not None
    assert instance.slice_positions_mm[0] == "Image Position (Patient)"
    assert _volume(result) == pytest.approx(truth, rel=0.05)


def test_unevenly_spaced_slices_are_refused(tmp_path: Path) -> None:
    """A frame dropped half-way (a 1.2 mm step among 0.6 mm ones): one spacing cannot hold
    for the whole volume. Before: measured with the declared 0.6 mm."""

    def edit(ds: Dataset) -> None:
        for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
            z = 0.6 * k + (0.6 if k >= 28 else 0.0)
            frame.PlanePositionVolumeSequence[0].ImagePositionVolume = [0.0, 0.0, round(z, 6)]

    _, instance, result = _run(tmp_path, edit)
    assert instance.voxel_spacing_mm is None
    assert result.status == ResultStatus.SKIPPED
    assert result.reason == (
        "the slices are not evenly spaced: their Image Position (Volume) steps from 0.6 to "
        "1.2 mm along the slice normal"
    )
