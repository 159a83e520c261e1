"""Simulated sweeping displays and fast heart rates: pixels, flags and truth agree."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from usreview.dicom import ScrollingType, read
from usreview.errors import SimulationError
from usreview.simulate import simulate

REGION = {"mmode": 1, "pw": 1}


def _load(path: Path) -> tuple[pydicom.Dataset, dict[str, Any]]:
    return pydicom.dcmread(path), json.loads(path.with_suffix(".truth.json").read_text())


def _strip(ds: pydicom.Dataset, kind: str) -> np.ndarray:
    r = ds.SequenceOfUltrasoundRegions[REGION[kind]]
    return np.asarray(
        ds.pixel_array[
            r.RegionLocationMinY0 : r.RegionLocationMaxY1 + 1,
            r.RegionLocationMinX0 : r.RegionLocationMaxX1 + 1,
        ]
    )


@pytest.mark.parametrize("kind", ["mmode", "pw"])
def test_a_sweep_shows_the_recording_rolled_at_the_write_point_with_an_erase_bar(
    tmp_path: Path, kind: str
) -> None:
    recorded, _ = _load(simulate(kind, tmp_path / "scrolling", seed=4)[0])
    path = simulate(kind, tmp_path / "sweep", seed=4, write_point=0.4)[0]
    ds, truth = _load(path)
    assert ds.SequenceOfUltrasoundRegions[REGION[kind]].RegionFlags == 0x10
    region = read(path).regions[REGION[kind]]
    assert region.scrolling == ScrollingType.SWEEPING
    plain, shown = _strip(recorded, kind), _strip(ds, kind)
    n = plain.shape[1]
    sweep = truth["sweep"]
    k = sweep["write_point_column"]
    assert k == round(0.4 * n)
    assert sweep["erase_columns"] == [k, k + 8]
    assert not shown[:, k : k + 8].any()  # the erase bar is blank
    # newest time left of the write point, the oldest right of the erase bar
    assert np.array_equal(shown[:, :k], plain[:, n - k :])
    assert np.array_equal(shown[:, k + 8 :], plain[:, 8 : n - k])
    assert [p["columns"] for p in sweep["parts"]] == [[0, k], [k + 8, n]]
    left, right = sweep["parts"]
    assert right["end_s"] < left["start_s"]  # time jumps back at the write point


def test_pw_sweep_truth_counts_only_cycles_on_one_side(tmp_path: Path) -> None:
    _, truth = _load(simulate("pw", tmp_path, seed=2, write_point=0.55)[0])
    times = truth["column_times_s"]
    sweep = truth["sweep"]
    k = sweep["write_point_column"]
    assert times[k : k + 8] == [None] * 8 and truth["envelope_cm_s"][k] is None
    dt = truth["s_per_pixel"]
    steps = [b - a for a, b in itertools.pairwise(times[:k])]  # continuous left of it
    assert steps == pytest.approx([dt] * (k - 1), abs=2e-6)
    assert times[k - 1] - times[k + 8] == pytest.approx((len(times) - 9) * dt, abs=2e-6)
    sides = [(p["start_s"], p["end_s"]) for p in sweep["parts"]]
    for cycle in truth["cycles"]:  # each within one side: none crosses the write point
        start, end = cycle["start_s"], cycle["start_s"] + cycle["period_s"]
        assert any(a <= start and end <= b for a, b in sides)
    assert truth["cycle_count"] == sum(p["cycle_count"] for p in sweep["parts"])
    counted = [c for p in sweep["parts"] for c in p["cycles"]]
    assert sorted(c["start_s"] for c in counted) == [c["start_s"] for c in truth["cycles"]]
    for part in sweep["parts"]:
        if part["cycle_count"]:
            periods = [c["period_s"] for c in part["cycles"]]
            assert part["heart_rate_bpm"] == pytest.approx(60.0 / np.mean(periods))


@pytest.mark.parametrize("kind", ["mmode", "pw"])
def test_heart_rates_up_to_300_per_min_can_be_simulated(tmp_path: Path, kind: str) -> None:
    """The cap was 200/min: a fetal or neonatal tachycardia could not be simulated."""
    _, truth = _load(simulate(kind, tmp_path, seed=0, heart_rate_bpm=280)[0])
    assert truth["heart_rate_bpm"] == pytest.approx(280.0, rel=0.05)
    with pytest.raises(SimulationError, match="'heart_rate_bpm'"):
        simulate(kind, tmp_path / "too fast", heart_rate_bpm=301)


def test_a_write_point_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match=r"'write_point': 1.0 is outside \[0.0, 0.95\]"):
        simulate("mmode", tmp_path, write_point=1.0)
    with pytest.raises(SimulationError, match=r"'erase_columns': -1 is outside \[0, 64\]"):
        simulate("pw", tmp_path, write_point=0.5, erase_columns=-1)
    assert not list(tmp_path.iterdir())
