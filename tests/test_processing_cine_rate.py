"""``cine_heart_rate``: the heart rate of a cine from the repetition of its frames.

Accuracy against the simulator's known rate, the refusals (skipped with the reason, never a
value), an uneven Frame Time Vector, and a real echo cine read the same from either half.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from tests.conftest import real_file
from usreview.dicom import read
from usreview.processing import ProcessorResult, ResultStatus, default_registry, run_pipeline
from usreview.processing.quantification.cine import _measured_box
from usreview.simulate import simulate

REAL_ECHO = "pydicom-data__color3d_jpeg_baseline.dcm"  # SonoSite, 120 frames at 30/s


def _cine(folder: Path, bpm: float, fps: float, cycles: float = 3.3, **params: Any) -> Path:
    frames = min(300, round(cycles * 60.0 / bpm * fps) + 1)
    return simulate(
        "cine",
        folder,
        heart_rate_bpm=bpm,
        frame_rate_hz=fps,
        frames=frames,
        rows=240,
        columns=320,
        **params,
    )[0]


def _rate(path: Path) -> ProcessorResult:
    return default_registry().get("cine_heart_rate").run(read(path))


# 4.5 frames per cycle or more, at 40, 10 and 5 dB. 7.5 (120/min at 15/s) and 5.6 (270/min at
# 25/s) read half the rate before a weaker first peak was accepted (a multiple landed on
# whole frames).
CASES = [
    (30.0, 15.0, 0, 40.0),
    (45.0, 60.0, 1, 10.0),
    (72.0, 30.0, 2, 40.0),
    (72.0, 15.0, 3, 5.0),
    (90.0, 25.0, 4, 10.0),
    (120.0, 15.0, 5, 40.0),
    (150.0, 50.0, 6, 5.0),
    (180.0, 20.0, 7, 40.0),
    (210.0, 25.0, 8, 10.0),
    (240.0, 60.0, 9, 40.0),
    (270.0, 25.0, 10, 5.0),
]


@pytest.mark.parametrize(("bpm", "fps", "seed", "snr"), CASES)
def test_the_rate_of_a_simulated_cine_is_within_two_percent(
    tmp_path: Path, bpm: float, fps: float, seed: int, snr: float
) -> None:
    path = _cine(tmp_path, bpm, fps, seed=seed, snr_db=snr)
    truth = json.loads(path.with_suffix(".truth.json").read_text())
    result = _rate(path)
    assert result.status == ResultStatus.DONE, result.reason
    rate = result.quantity("heart_rate")
    assert rate is not None and rate.unit == "/min" and rate.code.value == "8867-4"
    assert rate.value == pytest.approx(truth["motion"]["heart_rate_bpm"], rel=0.02)
    assert rate.cycles == 3  # whole cycles in the cine (3.3 shown)
    assert rate.details["frame_similarity"] > 0.3


def _without_timing(path: Path) -> Path:
    ds = pydicom.dcmread(path)
    for keyword in ("FrameTime", "FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate"):
        if keyword in ds:
            delattr(ds, keyword)
    if "FrameIncrementPointer" in ds:
        del ds.FrameIncrementPointer
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: _cine(d, 72, 30, seed=1, amplitude_mm=0.0), "do not repeat"),
        (lambda d: _cine(d, 72, 30, cycles=1.2, seed=1), "do not repeat"),
        (lambda d: _cine(d, 280, 15, seed=1), "a higher frame rate is needed"),
        (lambda d: _cine(d, 20, 15, seed=1), "slower than a heart"),
        (lambda d: _without_timing(_cine(d, 72, 30, seed=1)), "no frame timing"),
    ],
    ids=["no motion", "1.2 cycles", "3.2 frames per cycle", "20 per min", "no timing"],
)
def test_what_has_no_heart_rate_is_skipped_with_the_reason(
    tmp_path: Path, make: Any, reason: str
) -> None:
    result = _rate(make(tmp_path))
    assert result.status == ResultStatus.SKIPPED
    assert result.reason is not None and result.reason.startswith("no heart rate: ")
    assert reason in result.reason
    assert not result.output.quantities and not result.output.findings


def test_an_uneven_frame_time_vector_is_placed_on_an_even_grid(tmp_path: Path) -> None:
    """Every frame of the first half, every other one of the second: a Frame Time Vector."""
    path = _cine(tmp_path, 84, 30, cycles=5.3, seed=3)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    half = len(frames) // 2
    keep = [*range(half), *range(half, len(frames), 2)]
    ms = float(ds.FrameTime)
    ds.PixelData = np.ascontiguousarray(frames[keep]).tobytes()
    ds.NumberOfFrames = len(keep)
    ds.FrameTimeVector = [0.0] + [round((b - a) * ms, 4) for a, b in itertools.pairwise(keep)]
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTimeVector")
    del ds.FrameTime
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path)
    result = _rate(path)
    assert result.status == ResultStatus.DONE, result.reason
    rate = result.quantity("heart_rate")
    assert rate is not None
    assert rate.value == pytest.approx(84.0, rel=0.02)


@pytest.mark.parametrize("delta_cm", [1e-7, 50.0], ids=["a micrometre", "half a metre"])
def test_a_nonsense_calibration_still_gives_blocks_of_a_sane_size(
    tmp_path: Path, delta_cm: float
) -> None:
    """Blocks follow the calibration only within bounds: every pixel kept would take GBs."""
    path = _cine(tmp_path, 96, 30, seed=4)
    ds = pydicom.dcmread(path)
    region = ds.SequenceOfUltrasoundRegions[0]
    region.PhysicalDeltaX = region.PhysicalDeltaY = delta_cm
    ds.save_as(path)
    instance = read(path)
    box, side = _measured_box(instance, 1.0)
    height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
    assert 1 <= side <= min(height, width) // 8
    assert (height // side) * (width // side) <= 32768
    rate = default_registry().get("cine_heart_rate").run(instance).quantity("heart_rate")
    assert rate is not None and rate.value == pytest.approx(96.0, rel=0.02)


def _half(source: Path, target: Path, first: int, count: int) -> Path:
    ds = pydicom.dcmread(source)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    ds.PixelData = encapsulate(frames[first : first + count])
    ds.NumberOfFrames = count
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


def test_a_real_echo_cine_reads_the_same_rate_from_either_half(tmp_path: Path) -> None:
    source = real_file(REAL_ECHO)
    whole = _rate(source)
    assert whole.status == ResultStatus.DONE, whole.reason
    rate = whole.quantity("heart_rate")
    assert rate is not None and rate.cycles is not None
    assert 55.0 <= rate.value <= 80.0  # about 27.5 frames at 33.3 ms between beats
    assert rate.cycles >= 3
    for first in (0, 60):
        half = _rate(_half(source, tmp_path / f"half-{first}.dcm", first, 60))
        assert half.status == ResultStatus.DONE, half.reason
        half_rate = half.quantity("heart_rate")
        assert half_rate is not None
        assert half_rate.value == pytest.approx(rate.value, rel=0.02)


def test_the_default_pipeline_measures_a_cine_s_rate(tmp_path: Path) -> None:
    results = {r.provenance.processor: r for r in run_pipeline(read(_cine(tmp_path, 66, 30)))}
    rate = results["cine_heart_rate"].quantity("heart_rate")
    assert rate is not None and rate.value == pytest.approx(66.0, rel=0.02)
    assert results["mmode_motion"].status == ResultStatus.SKIPPED


def sweep(folder: Path, seeds: int = 2) -> None:
    """Print the accuracy over every rate, frame rate and noise level (about 8 min).

    ``python -m tests.test_processing_cine_rate``: 30 to 270/min, 15 to 60 frames/s (4.5
    frames per cycle or more), 40, 10 and 5 dB, ``seeds`` seeds each.
    """
    errors = []
    for snr in (40.0, 10.0, 5.0):
        for seed in range(seeds):
            for bpm in (30, 45, 60, 75, 90, 120, 150, 180, 210, 240, 270):
                for fps in (15, 20, 25, 30, 50, 60):
                    if fps * 60 / bpm < 4.5:
                        continue
                    name = f"{snr:g}-{seed}-{bpm}-{fps}"
                    path = _cine(folder / name, bpm, fps, seed=200 + seed, snr_db=snr)
                    rate = _rate(path).quantity("heart_rate")
                    error = 100.0 if rate is None else abs(rate.value - bpm) / bpm * 100
                    errors.append((error, name))
    values = np.array([e for e, _ in errors])
    print(
        f"{len(values)} cases: error at most {values.max():.2f}% "
        f"({max(errors)[1]}: dB-seed-rate-fps), 95% within {np.percentile(values, 95):.2f}%"
    )


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        sweep(Path(scratch))
