"""Simulated studies read back through the DICOM model: kinds, regions and truth agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from usreview.dicom import ImageKind, distance, read, region_for_points
from usreview.simulate import KINDS, simulate

EXPECTED_KINDS = {
    "bmode": {"bmode"},
    "cine": {"bmode", "cine"},
    "mmode": {"bmode", "mmode"},
    "pw": {"bmode", "pw_doppler", "duplex"},
    "cw": {"cw_doppler"},
    "color": {"bmode", "color_flow"},
    "volume": {"volume"},
}


def _study(kind: str, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    (path,) = simulate(kind, tmp_path / kind, seed=3)
    truth = json.loads(path.with_suffix(".truth.json").read_text())
    return read(path), truth


def test_every_kind_is_covered() -> None:
    assert set(KINDS) == set(EXPECTED_KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_kinds_and_regions_read_back(kind: str, tmp_path: Path) -> None:
    instance, truth = _study(kind, tmp_path)
    assert {k.value for k in instance.kinds} == EXPECTED_KINDS[kind]
    assert instance.warnings == []
    assert instance.sop_instance_uid == truth["sop_instance_uid"]
    if "region" in truth:
        region = truth["region"]
        read_back = next(
            r for r in instance.regions if list(r.bounds[:2]) == region["location_min"]
        )
        assert list(read_back.bounds[2:]) == region["location_max"]
        assert [read_back.delta_x, read_back.delta_y] == pytest.approx(region["physical_delta"])
        assert [read_back.reference_pixel_x0, read_back.reference_pixel_y0] == region[
            "reference_pixel"
        ]
        assert [read_back.reference_value_x, read_back.reference_value_y] == pytest.approx(
            region["reference_physical_value"]
        )
        assert (int(read_back.units_x), int(read_back.units_y)) == tuple(region["units"])
    frame = instance.display_frame(instance.number_of_frames - 1)
    assert frame.dtype == np.uint8 and frame.std() > 5


def test_bmode_calibrated_points_and_distances_match_truth(tmp_path: Path) -> None:
    instance, truth = _study("bmode", tmp_path)
    targets = truth["point_targets"]
    for target in targets:
        region = region_for_points(instance.regions, [tuple(target["pixel"])])
        x, y = region.to_physical(*target["pixel"])
        assert [float(x), float(y)] == pytest.approx(target["physical_cm"], abs=1e-6)
    for pair in truth["point_pairs"]:
        a, b = (tuple(targets[i]["pixel"]) for i in pair["points"])
        value, unit = distance(instance.regions, a, b)
        assert unit.ucum == "cm"
        assert value * 10 == pytest.approx(pair["distance_mm"], abs=1e-4)


def test_spectral_baseline_is_zero_velocity(tmp_path: Path) -> None:
    instance, truth = _study("pw", tmp_path)
    (spectral,) = [r for r in instance.regions if r.data_type.name == "PW_SPECTRAL_DOPPLER"]
    _t, v = spectral.to_physical(spectral.min_x0, truth["baseline_row"])
    assert float(v) == pytest.approx(0.0, abs=1e-9)
    assert spectral.delta_y == pytest.approx(-truth["cm_s_per_pixel"])
    assert spectral.pulse_repetition_frequency_hz == pytest.approx(truth["prf_hz"])


def test_cine_timing_and_volume_spacing(tmp_path: Path) -> None:
    cine, truth = _study("cine", tmp_path)
    assert cine.timing.frame_time_ms == pytest.approx(truth["frame_time_ms"])
    assert cine.number_of_frames == truth["frames"]
    volume, truth = _study("volume", tmp_path)
    assert volume.has_kind(ImageKind.VOLUME)
    assert volume.frames().shape == tuple(truth["shape_frames_rows_columns"])
    spacing = truth["voxel_spacing_mm"]  # x, y, z = column, row, frame
    assert volume.voxel_spacing_mm == pytest.approx((spacing[2], spacing[1], spacing[0]))
