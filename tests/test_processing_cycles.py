"""Cycle detection on synthetic traces: the searched heart rates, their edges, sub-harmonics.

Processor 1.6 (Doppler) and 1.2 (M-mode) searched 30 to 200/min and left the range's edge
out of the autocorrelation peak search: a period outside (or on) the range was replaced by a
multiple, so 300/min read 150 and 400/min read 200.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from usreview.processing.quantification.cycles import MAX_BPM, detect_cycles
from usreview.simulate.doppler import shape_function

Float = npt.NDArray[np.float64]


def _pulses(
    bpm: float, *, seconds: float = 4.0, dt: float = 0.005, strengths: tuple[float, ...] = (1.0,)
) -> Float:
    """A train of systolic pulses at ``bpm`` (20 cm/s baseline, 60 cm/s pulse), beat ``k``
    scaled by ``strengths[k % len(strengths)]``."""
    beats = np.arange(round(seconds / dt)) * dt * bpm / 60.0 + 0.3
    phase, k = beats % 1.0, np.floor(beats).astype(int)
    strength = np.asarray(strengths)[k % len(strengths)]
    out: Float = 20.0 + 60.0 * strength * np.exp(-0.5 * ((phase - 0.2) / 0.06) ** 2)
    return out


def _rates(envelope: Float, dt: float = 0.005) -> list[float]:
    return [60.0 / c.period_s for c in detect_cycles(envelope, dt).cycles]


@pytest.mark.parametrize("bpm", [250.0, 300.0])
def test_fast_rates_inside_the_range_are_measured_not_halved(bpm: float) -> None:
    """1.6 read 300/min as 150 (the lag of 0.2 s lay below the 0.3 s searched)."""
    rates = _rates(_pulses(bpm))
    assert len(rates) >= 14
    assert np.mean(rates) == pytest.approx(bpm, abs=0.5)


@pytest.mark.parametrize("bpm", [330.0, 400.0])
def test_a_period_beyond_the_fastest_rate_searched_is_refused(bpm: float) -> None:
    """1.6 read 400/min as 200 and 330/min as 229: a multiple of the true period."""
    found = detect_cycles(_pulses(bpm), 0.005)
    assert found.cycles == [] and found.period_s is None
    assert found.problem is not None
    assert f"faster than the {MAX_BPM:g}/min searched" in found.problem


def test_a_slow_rate_with_two_cycles_in_view_is_measured() -> None:
    """20/min over 10 s: 1.6 searched down to 30/min only and found no cycle."""
    rates = _rates(_pulses(20.0, seconds=10.0))
    assert len(rates) == 2
    assert np.mean(rates) == pytest.approx(20.0, abs=0.1)


@pytest.mark.parametrize("bpm", [100.0, 120.0, 150.0])
def test_alternating_beat_strengths_count_every_beat(bpm: float) -> None:
    """Every other beat at half strength: the autocorrelation peaks at two beats, but a peak
    of comparable strength lies at half that lag and its cycles are regular. 1.6 took the
    two-beat lag: 100/min read 50, 120 read 60, 150 read 75."""
    rates = _rates(_pulses(bpm, strengths=(1.0, 0.5)))
    assert len(rates) >= 5
    assert np.mean(rates) == pytest.approx(bpm, abs=0.5)


@pytest.mark.parametrize("start", [0.12, 0.15, 0.2])
def test_a_trace_opening_after_the_systolic_peak_starts_no_cycle_at_its_late_hump(
    start: float,
) -> None:
    """A carotid waveform whose strip opens between the systolic peak and the late-systolic
    hump: 1.6 took the hump's rise as an upstroke, a first cycle of 89.9/min at 72/min."""
    f, _ = shape_function("carotid")
    dt, period = 0.006, 60.0 / 72.0
    t = np.arange(round(3.5 / dt)) * dt
    rates = _rates(25.0 + 55.0 * f(start + t / period), dt)
    assert len(rates) == 3
    assert rates == pytest.approx([72.0] * 3, abs=0.1)
