"""Spectra that do not fit their velocity scale are refused; reversed flow does not win.

Aliasing is made as a scanner makes it: the baseline moved ``k`` rows toward the flow at the
same PRF, so the top ``k`` rows of the simulated spectrum wrap around to the bottom.
Reversed diastolic flow is added to a simulated spectrum with the simulator's own physics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from usreview.dicom import read
from usreview.processing import ProcessorResult, ResultStatus, default_registry
from usreview.simulate import doppler, simulate


def _run(path: Path) -> ProcessorResult:
    return default_registry().get("doppler_indices").run(read(path))


def _move_baseline(source: Path, path: Path, k: int) -> Path:
    """The spectrum with its baseline ``k`` rows up (down if negative), wrapped around."""
    ds = pydicom.dcmread(source)
    region = ds.SequenceOfUltrasoundRegions[-1]
    x0, y0 = region.RegionLocationMinX0, region.RegionLocationMinY0
    x1, y1 = region.RegionLocationMaxX1, region.RegionLocationMaxY1
    pixels = ds.pixel_array.copy()
    pixels[y0 : y1 + 1, x0 : x1 + 1] = np.roll(pixels[y0 : y1 + 1, x0 : x1 + 1], -k, axis=0)
    ds.PixelData = pixels.tobytes()
    region.ReferencePixelY0 = region.ReferencePixelY0 - k
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    ("seed", "snr", "flow", "k"),
    [
        (0, 20.0, "toward", 90),
        (0, 20.0, "toward", 60),
        (1, 5.0, "toward", 60),
        (2, 30.0, "away", -60),
    ],
)
def test_an_aliased_spectrum_is_refused_with_the_reason(
    tmp_path: Path, seed: int, snr: float, flow: str, k: int
) -> None:
    """Before: k=90 gave PSV 65.5, EDV 0.43, RI 0.993 (truth 81.2, 25, 0.692), status done."""
    source = simulate("pw", tmp_path, seed=seed, snr_db=snr, flow=flow)[0]
    result = _run(_move_baseline(source, tmp_path / "aliased.dcm", k))
    assert result.status == ResultStatus.SKIPPED, result.output.quantities
    assert (result.reason or "").startswith("aliased or clipped spectrum: ")
    move = "lower" if flow == "toward" else "raise"
    assert f"{move} the baseline or raise the scale" in (result.reason or "")
    assert result.output.quantities == ()


@pytest.mark.parametrize(("seed", "snr", "k"), [(0, 20.0, 0), (0, 20.0, 30), (3, 0.0, 0)])
def test_a_spectrum_within_its_scale_is_still_measured(
    tmp_path: Path, seed: int, snr: float, k: int
) -> None:
    """The peaks (about 190 rows above the baseline) fit below the edge: no refusal."""
    source = simulate("pw", tmp_path, seed=seed, snr_db=snr)[0]
    truth = json.loads(source.with_suffix(".truth.json").read_text())
    result = _run(_move_baseline(source, tmp_path / "moved.dcm", k))
    assert result.status == ResultStatus.DONE, result.reason
    psv = result.quantity("peak_systolic_velocity")
    assert psv is not None and psv.value == pytest.approx(truth["psv_cm_s"], rel=0.05)


def _with_reversed_diastolic_flow(
    source: Path, path: Path, reversed_cm_s: float, weight: float
) -> Path:
    """Replace the spectrum of ``source`` (PSV 80, EDV 0, toward) by forward flow plus
    diastolic flow away from the probe at ``reversed_cm_s``, ``weight`` times as strong
    (no reversed power while the reversed flow stops)."""
    ds = pydicom.dcmread(source)
    region = ds.SequenceOfUltrasoundRegions[-1]
    x0, y0 = region.RegionLocationMinX0, region.RegionLocationMinY0
    x1, y1 = region.RegionLocationMaxX1, region.RegionLocationMaxY1
    rows, columns = y1 - y0 + 1, x1 - x0 + 1
    spec = doppler.Spectrum(
        rows=rows,
        columns=columns,
        baseline=region.ReferencePixelY0,
        dv=-float(region.PhysicalDeltaY),
        dt=float(region.PhysicalDeltaX),
        frequency_mhz=5.0,
        angle_deg=60.0,
        window_s=0.01,
        broadening=0.1,
        sample_volume=0.5,
        wall_filter=3.0,
    )
    period = 60.0 / 72.0
    starts = np.arange(-0.3, columns * spec.dt + 1.0, period)
    n = len(starts)
    shape, shape_mean = doppler.shape_function("carotid")
    forward = doppler.Beats(starts, np.full(n, period), np.full(n, 80.0), 0.0, shape, shape_mean)
    phase, level = np.array([0, 0.05, 0.10, 0.30, 0.40, 1.0]), np.array([1, 0.3, 0, 0, 1, 1])

    def reversed_shape(p: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.interp(np.mod(p, 1.0), phase, level)
        return out

    backward = doppler.Beats(
        starts, np.full(n, period), np.full(n, reversed_cm_s), 0.0, reversed_shape, 0.0
    )
    flowing = backward.vmax(np.arange(columns) * spec.dt) > 1.0  # no power at zero velocity
    mean = doppler.mean_spectrum(spec, forward, +1) + weight * flowing * doppler.mean_spectrum(
        spec, backward, -1
    )
    rng = np.random.default_rng(1)
    noise = 10 ** (-2.5) / rows
    power = mean * rng.exponential(size=mean.shape) + noise * rng.exponential(size=mean.shape)
    db = 10 * np.log10(np.maximum(power / (mean.max() * 10**0.3), 1e-30))
    pixels = ds.pixel_array.copy()
    pixels[y0 : y1 + 1, x0 : x1 + 1] = np.clip(np.rint(255 * (db + 50) / 50), 0, 255)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path)
    return path


@pytest.mark.parametrize("weight", [1.0, 3.0, 10.0])
def test_concentrated_reversed_diastolic_flow_does_not_take_the_forward_side(
    tmp_path: Path, weight: float
) -> None:
    """Before: at weight 3 the reversed side (mean power per row) won: PSV 25.7, away."""
    source = simulate("pw", tmp_path, seed=0, snr_db=25, psv_cm_s=80, edv_cm_s=0)[0]
    path = _with_reversed_diastolic_flow(source, tmp_path / "reversed.dcm", 15.0, weight)
    result = _run(path)
    assert result.status == ResultStatus.DONE, result.reason
    direction = next(f for f in result.output.findings if f.code == "flow_direction")
    assert direction.evidence["flow_sign"] == 1
    psv = result.quantity("peak_systolic_velocity")
    assert psv is not None and psv.value == pytest.approx(80.0, rel=0.05)
