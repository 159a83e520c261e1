"""The truth sidecars agree with the pixels and with the DICOM calibration."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from scipy import ndimage

from usreview.simulate import simulate


def _load(path: Path) -> tuple[Dataset, dict[str, Any]]:
    return pydicom.dcmread(path), json.loads(path.with_suffix(".truth.json").read_text())


def _physical(region: Dataset, col: float, row: float) -> tuple[float, float]:
    """The DICOM region formula, written independently of the simulator."""
    x = (
        region.ReferencePixelPhysicalValueX
        + (col - (region.RegionLocationMinX0 + region.ReferencePixelX0)) * region.PhysicalDeltaX
    )
    y = (
        region.ReferencePixelPhysicalValueY
        + (row - (region.RegionLocationMinY0 + region.ReferencePixelY0)) * region.PhysicalDeltaY
    )
    return x, y


def _crop(ds: Dataset, region: Dataset) -> np.ndarray:
    return np.asarray(
        ds.pixel_array[
            region.RegionLocationMinY0 : region.RegionLocationMaxY1 + 1,
            region.RegionLocationMinX0 : region.RegionLocationMaxX1 + 1,
        ]
    )


# --- bmode -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 4])
def test_bmode_inclusions_and_targets_match_pixels(tmp_path: Path, seed: int) -> None:
    ds, truth = _load(simulate("bmode", tmp_path, seed=seed)[0])
    (region,) = ds.SequenceOfUltrasoundRegions
    assert (region.RegionSpatialFormat, region.RegionDataType) == (1, 1)
    assert region.PhysicalUnitsXDirection == region.PhysicalUnitsYDirection == 3
    assert region.ReferencePixelX0 != 0 and region.ReferencePixelY0 != 0
    assert region.ReferencePixelPhysicalValueX != 0 and region.ReferencePixelPhysicalValueY != 0
    image = ds.pixel_array.astype(float)
    rows, cols = np.mgrid[: ds.Rows, : ds.Columns]
    assert {inc["kind"] for inc in truth["inclusions"]} == {"anechoic", "hyperechoic", "hypoechoic"}
    for inc in truth["inclusions"]:
        cx, cy = inc["centre_pixel"]
        assert _physical(region, cx, cy) == pytest.approx(inc["centre_cm"], abs=1e-6)
        a, b = (s / 10 / region.PhysicalDeltaX for s in inc["semi_axes_mm"])
        r2 = ((cols - cx) / a) ** 2 + ((rows - cy) / b) ** 2
        inside = image[r2 < 0.5**2].mean()
        ring = image[(r2 > 1.5**2) & (r2 < 2.2**2)].mean()
        assert inc["area_mm2"] == pytest.approx(math.pi * a * b * (10 * region.PhysicalDeltaX) ** 2)
        if inc["kind"] == "anechoic":
            assert inside < 25 < 120 < ring
        elif inc["kind"] == "hyperechoic":
            assert inside > ring + 20
        else:
            assert inside < ring - 15
    for target in truth["point_targets"]:
        col, row = target["pixel"]
        assert ds.pixel_array[row, col] == 255
        assert _physical(region, col, row) == pytest.approx(target["physical_cm"], abs=1e-9)
    for pair in truth["point_pairs"]:
        p, q = (truth["point_targets"][i]["physical_cm"] for i in pair["points"])
        assert math.dist(p, q) * 10 == pytest.approx(pair["distance_mm"], abs=1e-4)
        assert pair["distance_mm"] > 5


# --- cine --------------------------------------------------------------------------


def test_cine_structure_follows_truth_motion(tmp_path: Path) -> None:
    ds, truth = _load(simulate("cine", tmp_path, seed=2, amplitude_mm=5.0)[0])
    motion = truth["motion"]
    assert ds.NumberOfFrames == truth["frames"] == 30
    assert float(ds.FrameTime) == pytest.approx(truth["frame_time_ms"]) == pytest.approx(1000 / 30)
    assert ds.FrameIncrementPointer == 0x00181063
    assert ds.CineRate == 30
    assert motion["frequency_hz"] == pytest.approx(72 / 60)
    frames = ds.pixel_array.astype(float)
    found = []
    for frame, (cx, cy) in zip(frames, motion["centre_pixel_per_frame"], strict=True):
        band = ndimage.uniform_filter1d(frame[:, int(cx) - 8 : int(cx) + 9].mean(axis=1), 5)
        bright = band > (np.median(band) + band.max()) / 2
        labels, _ = ndimage.label(bright)
        run = np.flatnonzero(labels == labels[np.argmax(band)])
        found.append((run[0] + run[-1]) / 2)
        assert abs(found[-1] - cy) <= 2
    rows = np.array([c[1] for c in motion["centre_pixel_per_frame"]])
    assert np.ptp(rows) / 2 == pytest.approx(motion["amplitude_px"], rel=0.05)
    assert np.corrcoef(found, rows)[0, 1] > 0.97


# --- mmode -------------------------------------------------------------------------


def test_mmode_walls_and_dimensions_match_pixels(tmp_path: Path) -> None:
    ds, truth = _load(simulate("mmode", tmp_path, seed=3)[0])
    bmode, mmode = ds.SequenceOfUltrasoundRegions
    assert (bmode.RegionSpatialFormat, mmode.RegionSpatialFormat) == (1, 2)  # 2D, M-mode
    assert (mmode.PhysicalUnitsXDirection, mmode.PhysicalUnitsYDirection) == (4, 3)
    strip = _crop(ds, mmode).astype(float)
    septum = np.array(truth["septal_endocardium_row"]) - mmode.RegionLocationMinY0
    posterior = np.array(truth["posterior_endocardium_row"]) - mmode.RegionLocationMinY0
    cavity, wall = [], []
    for col in range(strip.shape[1]):
        top, bottom = math.ceil(septum[col]) + 3, math.floor(posterior[col]) - 3
        cavity.append(strip[top:bottom, col].mean())
        wall.append(
            strip[math.ceil(posterior[col]) + 2 : math.ceil(posterior[col]) + 12, col].mean()
        )
    assert np.mean(cavity) < 30 < 130 < np.mean(wall)
    # dimensions from the true borders, with the region's cm per pixel
    lvid_mm = (posterior - septum) * mmode.PhysicalDeltaY * 10
    assert lvid_mm.max() == pytest.approx(truth["lvidd_mm"], abs=0.05)
    assert lvid_mm.min() == pytest.approx(truth["lvids_mm"], abs=0.1)
    fs = (truth["lvidd_mm"] - truth["lvids_mm"]) / truth["lvidd_mm"]
    assert truth["fractional_shortening"] == pytest.approx(fs)
    ed = np.array(truth["end_diastole_s"])
    assert 60 / np.diff(ed).mean() == pytest.approx(truth["heart_rate_bpm"])
    # the border seen in the pixels moves with the truth: cavity/wall edge per column
    edges = []
    for col in range(strip.shape[1]):
        column = ndimage.uniform_filter1d(strip[:, col], 3)
        lo = int(posterior[col]) - 15
        edges.append(lo + int(np.argmax(column[lo : lo + 30] > 90)))
    assert np.median(np.abs(np.array(edges) - posterior)) <= 2


# --- pw / cw -----------------------------------------------------------------------


def _mgm_envelope(ds: Dataset, truth: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Modified geometric method on grey levels converted back to power."""
    region = ds.SequenceOfUltrasoundRegions[-1]
    grey = _crop(ds, region).astype(float)
    dr = truth["dynamic_range_db"]
    power = truth["reference_power"] * 10 ** ((grey * dr / 255 - dr) / 10)
    power = ndimage.uniform_filter1d(power, 3, axis=1)
    velocity = (np.arange(grey.shape[0]) - region.ReferencePixelY0) * region.PhysicalDeltaY
    sign = 1 if truth["flow"] == "toward" else -1
    keep = sign * velocity >= 0
    order = np.argsort(sign * velocity[keep])
    speed = (sign * velocity[keep])[order]
    cumulative = np.cumsum(power[keep][order], axis=0)
    chord = cumulative[-1][None, :] * np.arange(len(speed))[:, None] / (len(speed) - 1)
    knee = np.argmax(cumulative - chord, axis=0)
    return speed[knee], power


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("pw", {}),
        ("pw", {"flow": "away", "waveform": "renal", "psv_cm_s": 50.0, "edv_cm_s": 15.0}),
        ("pw", {"snr_db": 5.0}),
        ("cw", {}),
    ],
)
def test_spectral_envelope_follows_truth(tmp_path: Path, kind: str, params: dict[str, Any]) -> None:
    snr = params.pop("snr_db", None)
    ds, truth = _load(simulate(kind, tmp_path, seed=3, snr_db=snr, **params)[0])
    region = ds.SequenceOfUltrasoundRegions[-1]
    assert region.RegionSpatialFormat == 3  # spectral
    assert region.RegionDataType == (3 if kind == "pw" else 4)
    assert (region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection) == (4, 7)
    assert region.PhysicalDeltaY < 0 and region.ReferencePixelPhysicalValueY == 0
    assert truth["baseline_row"] == region.RegionLocationMinY0 + region.ReferencePixelY0
    assert truth["cm_s_per_pixel"] == pytest.approx(-region.PhysicalDeltaY)
    assert truth["s_per_pixel"] == pytest.approx(region.PhysicalDeltaX)
    if kind == "pw":
        assert region.PulseRepetitionFrequency == truth["prf_hz"]
        assert region.DopplerCorrectionAngle == 60
    envelope = np.array(truth["envelope_cm_s"])
    assert len(envelope) == region.RegionLocationMaxX1 - region.RegionLocationMinX0 + 1
    sign = 1 if truth["flow"] == "toward" else -1
    assert np.all(sign * envelope >= 0)
    traced, power = _mgm_envelope(ds, truth)
    true_speed = np.abs(envelope)
    fast = true_speed > 0.3 * truth["psv_cm_s"]
    rel = (traced[fast] - true_speed[fast]) / true_speed[fast]
    assert -0.05 < np.median(rel) < 0.10
    assert np.percentile(np.abs(rel), 80) < 0.15
    assert np.corrcoef(traced[fast], true_speed[fast])[0, 1] > 0.9
    # the flow is on the truth's side of the baseline
    velocity = (np.arange(power.shape[0]) - region.ReferencePixelY0) * region.PhysicalDeltaY
    assert power[sign * velocity > 5].sum() > 5 * power[sign * velocity < -5].sum()


@pytest.mark.parametrize("kind", ["pw", "cw"])
def test_spectral_indices_are_consistent(tmp_path: Path, kind: str) -> None:
    _, truth = _load(simulate(kind, tmp_path, seed=7)[0])
    cycles = truth["cycles"]
    assert truth["cycle_count"] == len(cycles) >= 2
    t = np.array(truth["column_times_s"])
    envelope = np.abs(np.array(truth["envelope_cm_s"]))
    for cycle in cycles:
        start, end = cycle["start_s"], cycle["start_s"] + cycle["period_s"]
        assert start >= 0 and end <= t[-1]
        inside = (t >= start) & (t <= end)
        assert envelope[inside].max() == pytest.approx(cycle["psv_cm_s"], rel=0.02)
        vti = np.trapezoid(envelope[inside], t[inside])
        assert vti == pytest.approx(cycle["vti_cm"], rel=0.03)
        psv, edv = cycle["psv_cm_s"], cycle["edv_cm_s"]
        assert cycle["ri"] == pytest.approx((psv - edv) / psv, abs=1e-5)
        assert cycle["pi"] == pytest.approx(
            (psv - edv) * cycle["period_s"] / cycle["vti_cm"], rel=1e-4
        )
    assert truth["psv_cm_s"] == pytest.approx(np.mean([c["psv_cm_s"] for c in cycles]))
    assert truth["ri"] == pytest.approx(np.mean([c["ri"] for c in cycles]))
    assert truth["vti_cm"] == pytest.approx(np.mean([c["vti_cm"] for c in cycles]))
    periods = [c["period_s"] for c in cycles]
    assert truth["heart_rate_bpm"] == pytest.approx(60 / np.mean(periods), rel=1e-5)
    assert abs(truth["heart_rate_bpm"] - (72 if kind == "pw" else 70)) < 8
    if kind == "cw":
        assert truth["edv_cm_s"] == 0 and truth["ri"] == 1


# --- color -------------------------------------------------------------------------


def test_color_pixels_decode_to_the_true_velocity(tmp_path: Path) -> None:
    ds, truth = _load(simulate("color", tmp_path, seed=2)[0])
    assert ds.PhotometricInterpretation == "RGB"
    tissue, box = ds.SequenceOfUltrasoundRegions
    assert box.RegionDataType == 2
    assert _physical(box, box.RegionLocationMinX0, box.RegionLocationMinY0) == pytest.approx(
        _physical(tissue, box.RegionLocationMinX0, box.RegionLocationMinY0)
    )
    rgb = ds.pixel_array.astype(int)
    table = np.array([entry["rgb"] for entry in truth["colour_map"]])
    speeds = np.array([entry["velocity_cm_s"] for entry in truth["colour_map"]])
    cx, cy = truth["vessel"]["centre_pixel"]
    patch = rgb[int(cy) - 1 : int(cy) + 2, int(cx) - 1 : int(cx) + 2].reshape(-1, 3)
    decoded = [speeds[np.argmin(np.abs(table - px).sum(axis=1))] for px in patch]
    assert np.median(decoded) == pytest.approx(
        truth["axial_centre_velocity_cm_s"], abs=0.1 * truth["nyquist_cm_s"]
    )
    # far from the vessel, inside the colour box: grey (no flow)
    grey = rgb[box.RegionLocationMinY0 + 2, box.RegionLocationMaxX1 - 2]
    assert grey[0] == grey[1] == grey[2]
    # the colour bar shows the map, +Nyquist on top
    bar = truth["colour_bar"]
    assert list(rgb[bar["top_row"], bar["columns"][0]]) == truth["colour_map"][-1]["rgb"]
    assert truth["colour_map"][-1]["velocity_cm_s"] == truth["nyquist_cm_s"]


def test_color_flow_away_is_blue(tmp_path: Path) -> None:
    ds, truth = _load(simulate("color", tmp_path, flow="away")[0])
    cx, cy = truth["vessel"]["centre_pixel"]
    r, _, b = ds.pixel_array[int(cy), int(cx)].astype(int)
    assert truth["axial_centre_velocity_cm_s"] < 0
    assert b > 150 and r == 0


# --- volume ------------------------------------------------------------------------


def test_volume_ellipsoid_matches_truth(tmp_path: Path) -> None:
    ds, truth = _load(simulate("volume", tmp_path, seed=5)[0])
    shared = ds.SharedFunctionalGroupsSequence[0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    thickness = float(shared.PixelMeasuresSequence[0].SliceThickness)
    assert [*spacing, thickness] == truth["voxel_spacing_mm"]
    frames = ds.PerFrameFunctionalGroupsSequence
    assert len(frames) == ds.NumberOfFrames == truth["shape_frames_rows_columns"][0]
    z = [float(f.PlanePositionVolumeSequence[0].ImagePositionVolume[2]) for f in frames]
    assert np.allclose(np.diff(z), thickness)
    # back to linear echo power (log compression over the display range), then smooth
    power = 10 ** (ds.pixel_array * truth["params"]["dynamic_range_db"] / 255 / 10)
    smooth = ndimage.uniform_filter(power, 5)
    dark = smooth < 0.5 * np.median(smooth)
    labels, _ = ndimage.label(dark)
    centre = truth["ellipsoid"]["centre_voxel_frame_row_column"]
    blob = labels == labels[tuple(round(c) for c in centre)]
    volume_ml = blob.sum() * np.prod(truth["voxel_spacing_mm"]) / 1000
    assert volume_ml == pytest.approx(truth["ellipsoid"]["volume_ml"], rel=0.03)
    a, b, c = truth["ellipsoid"]["semi_axes_mm_xyz"]
    assert truth["ellipsoid"]["volume_ml"] == pytest.approx(4 / 3 * math.pi * a * b * c / 1000)
    assert ndimage.center_of_mass(blob) == pytest.approx(centre, abs=1.0)


def test_reversed_diastolic_flow_truth_is_signed(tmp_path: Path) -> None:
    """A negative EDV reverses late diastole: signed truth, spectrum below the baseline."""
    ds, truth = _load(simulate("pw", tmp_path, seed=1, edv_cm_s=-12.0)[0])
    envelope = np.array(truth["envelope_cm_s"])
    assert truth["edv_cm_s"] == -12.0 and envelope.min() < -10.0
    for cycle in truth["cycles"]:
        assert cycle["ri"] == pytest.approx((cycle["psv_cm_s"] + 12.0) / cycle["psv_cm_s"])
    region = ds.SequenceOfUltrasoundRegions[-1]
    grey = _crop(ds, region).astype(float)
    below = grey[region.ReferencePixelY0 + 8 :]  # reversed flow: below the baseline
    assert below[:, envelope < -8.0].mean() > below[:, envelope > 8.0].mean() + 30.0
