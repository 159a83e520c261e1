"""Sweeping displays: cycles are measured only where time runs on, or refused with the reason.

A frozen sweeping display (Region Flags bits 3-4 = 2) shows the newest time left of its
write point and the oldest right of the erase bar. Processors 1.2 (M-mode) and 1.6
(Doppler) measured across the write point: M-mode at 75/min read 81.8 or 42.9/min, PW at
73.9/min read 36.1/min with the VTI doubled (65.6 cm for 33.0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from usreview.dicom import ScrollingType, read
from usreview.processing import ProcessorResult, ResultStatus, default_registry
from usreview.processing.quantification.cycles import continuous_columns
from usreview.simulate import simulate


def _run(
    tmp_path: Path, processor: str, kind: str, seed: int, **params: Any
) -> tuple[dict[str, Any], ProcessorResult]:
    path = simulate(kind, tmp_path, seed=seed, snr_db=20.0, **params)[0]
    truth = json.loads(path.with_suffix(".truth.json").read_text())
    result = default_registry().get(processor).run(read(path))
    assert result.status == ResultStatus.DONE, result.reason
    return truth, result


def _longer(truth: dict[str, Any]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = truth["sweep"]["parts"]
    return max(parts, key=lambda p: p["columns"][1] - p["columns"][0])


def _finding(result: ProcessorResult, code: str) -> Any:
    return next(f for f in result.output.findings if f.code == code)


# --- the write point on synthetic strips ------------------------------------------------


def _strip(columns: int = 300) -> np.ndarray:
    """Speckle-like grey levels whose mean drifts slowly with the column."""
    rng = np.random.default_rng(0)
    drift = 40.0 * np.sin(np.arange(columns) / 25.0)
    return np.clip(100.0 + drift + rng.normal(0.0, 20.0, (120, columns)), 0, 255).astype(np.uint8)


def test_a_scrolling_display_is_continuous_throughout() -> None:
    grey = _strip()
    grey[:, 100:108] = 0  # blank columns do not matter without the sweeping flag
    for scrolling in (ScrollingType.UNSPECIFIED, ScrollingType.SCROLLING):
        span = continuous_columns(grey, scrolling)
        assert (span.start, span.stop, span.note, span.problem) == (0, 300, None, None)


def test_the_erase_bar_splits_a_sweep_and_the_longer_side_is_kept() -> None:
    grey = _strip()
    grey[:, 110:118] = 0
    span = continuous_columns(grey, ScrollingType.SWEEPING)
    assert (span.start, span.stop, span.problem) == (118, 300, None)
    assert span.note == "erase bar at columns 110 to 117"
    grey = _strip()
    grey[:, 200:206] = 0
    span = continuous_columns(grey, ScrollingType.SWEEPING)
    assert (span.start, span.stop, span.note) == (0, 200, "erase bar at columns 200 to 205")


def test_a_jump_between_columns_that_stands_out_is_the_write_point() -> None:
    grey = _strip()
    grey[:, 180:] = np.clip(grey[:, 180:].astype(int) + 90, 0, 255).astype(np.uint8)
    span = continuous_columns(grey, ScrollingType.SWEEPING)
    assert (span.start, span.stop, span.problem) == (0, 180, None)
    assert span.note == "time jumps between columns 179 and 180"


def test_a_sweep_whose_write_point_does_not_show_is_refused_unless_it_scrolls_once_full() -> None:
    grey = _strip()
    grey[:, 260:] = 0  # not written yet (a first sweep) or erased: left out
    span = continuous_columns(grey, ScrollingType.SWEEPING)
    assert span.problem is not None and "write point shows neither" in span.problem
    span = continuous_columns(grey, ScrollingType.SWEEPING_THEN_SCROLLING)
    assert (span.start, span.stop, span.note, span.problem) == (0, 260, None, None)


# --- the processors on simulated sweeps ---------------------------------------------------

SWEEPS = [(seed, write_point) for seed in (0, 1, 2) for write_point in (0.2, 0.37, 0.6)]


@pytest.mark.parametrize(("seed", "write_point"), SWEEPS)
def test_mmode_heart_rate_on_the_longer_side_of_the_erase_bar(
    tmp_path: Path, seed: int, write_point: float
) -> None:
    """Within 1 beat/min (worst seen +0.59); 1.2 read 81.8-81.9 or 42.9/min here."""
    truth, result = _run(tmp_path, "mmode_motion", "mmode", seed, write_point=write_point)
    heart_rate = result.quantity("heart_rate")
    assert heart_rate is not None, [f.text for f in result.output.findings]
    assert abs(heart_rate.value - truth["heart_rate_bpm"]) <= 1.0
    longer = _longer(truth)
    assert 1 <= heart_rate.cycles <= longer["complete_cycles"] + 1  # a foot may fall inside
    sweep = _finding(result, "sweep")
    assert sweep.evidence["columns"] == longer["columns"]
    assert "erase bar at columns" in sweep.text and "are measured" in sweep.text


@pytest.mark.parametrize(
    ("seed", "write_point", "erase"),
    [(seed, wp, 8) for seed, wp in SWEEPS] + [(1, 0.43, 0), (3, 0.43, 0)],
)
def test_pw_heart_rate_and_vti_on_the_longer_side_of_the_write_point(
    tmp_path: Path, seed: int, write_point: float, erase: int
) -> None:
    """Against the truth of that side: heart rate within 1 beat/min (worst seen -0.43), VTI
    within 4% (+1.7%). Without an erase bar the write point is found where the columns
    jump. 1.6 read 36.1-69.5/min and VTIs up to +99% here."""
    truth, result = _run(
        tmp_path, "doppler_indices", "pw", seed, write_point=write_point, erase_columns=erase
    )
    longer = _longer(truth)
    q = {x.name: x for x in result.output.quantities}
    assert "heart_rate" in q, [f.text for f in result.output.findings]
    assert q["heart_rate"].cycles == longer["cycle_count"]
    assert abs(q["heart_rate"].value - longer["heart_rate_bpm"]) <= 1.0
    assert q["velocity_time_integral"].value == pytest.approx(longer["vti_cm"], rel=0.04)
    sweep = _finding(result, "sweep")
    assert sweep.evidence["columns"] == longer["columns"]
    assert ("erase bar" if erase else "time jumps between columns") in sweep.text


@pytest.mark.parametrize(
    ("kind", "processor"), [("mmode", "mmode_motion"), ("pw", "doppler_indices")]
)
def test_a_sweep_whose_write_point_does_not_show_is_refused_with_the_reason(
    tmp_path: Path, kind: str, processor: str
) -> None:
    """No erase bar, and the write point falls in diastole where both sides look alike: the
    cycle across it is longer or shorter than any other (1.2 read 42.9/min for 75, 1.6
    31.9/min for 73.2 with the VTI 76.5 cm for 33.4)."""
    _, result = _run(tmp_path, processor, kind, 0, write_point=0.43, erase_columns=0)
    assert result.output.quantities == ()
    refused = _finding(result, "no_cycles")
    assert "sweeps (Region Flags)" in refused.text
    assert "write point shows neither as blank erase columns nor as a jump" in refused.text


def test_pw_sweep_without_a_whole_cycle_on_its_longer_side_is_refused(tmp_path: Path) -> None:
    """40/min over 3.4 s with the write point in the middle: no side holds a whole cycle."""
    truth, result = _run(
        tmp_path,
        "doppler_indices",
        "pw",
        0,
        heart_rate_bpm=40.0,
        sweep_s=3.4,
        hr_variability=0.0,
        write_point=0.5,
    )
    assert truth["cycle_count"] == 0
    assert result.output.quantities == ()
    refused = _finding(result, "no_cycles")
    assert "no complete cycle lies on the longer side of its write point" in refused.text
