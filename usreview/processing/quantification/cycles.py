"""Cardiac cycles in a maximum-velocity envelope, and the indices averaged over them.

A cycle runs from one end diastole (the foot of the systolic upstroke) to the next. The
foot is found by the intersecting-tangent method (the tangent at the steepest point of the
upstroke meets the diastolic level before it), which is stable where the minimum itself is
flat. Only complete cycles (both feet inside the display) count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = ["Cycle", "detect_cycles", "dominant_period", "smooth_envelope", "sweep_problem"]

Float = npt.NDArray[np.float64]

MIN_BPM, MAX_BPM = 30.0, 200.0
EJECTION_FRACTION = 0.1
#: Columns of a time-based display (spectral Doppler, M-mode) closer than this are not
#: plausible: a spectral line needs at least one pulse, and no PRF reaches 100 kHz.
MIN_SECONDS_PER_COLUMN = 1e-5
#: The longest plausible sweep across a spectral or M-mode display (they show 1-12 s).
MAX_SWEEP_SECONDS = 60.0


@dataclass(frozen=True)
class Cycle:
    """One complete cycle: foot times (s), peak, end-diastolic level, mean of the envelope.

    ``ejection_integral`` integrates the envelope (cm) only where it exceeds 10% of the
    peak: the ejection of a CW aortic trace, without low-velocity clutter in diastole.
    """

    start_s: float
    end_s: float
    peak: float
    end_diastolic: float
    mean: float
    ejection_integral: float

    @property
    def period_s(self) -> float:
        """Duration (s)."""
        return self.end_s - self.start_s


def sweep_problem(seconds_per_column: float, columns: int) -> str | None:
    """Why a time axis of ``columns`` columns, ``seconds_per_column`` apart, cannot hold cycles.

    ``None`` when it can: columns at least 10 us apart (:data:`MIN_SECONDS_PER_COLUMN`) and
    a sweep no shorter than one cardiac cycle at :data:`MAX_BPM` (0.3 s), which also holds
    the 30 ms smoothing window of :func:`smooth_envelope`, and no longer than
    :data:`MAX_SWEEP_SECONDS`.
    """
    if not seconds_per_column >= MIN_SECONDS_PER_COLUMN:
        return (
            f"its columns are {seconds_per_column:g} s apart, less than the "
            f"{MIN_SECONDS_PER_COLUMN:g} s a displayed time column can plausibly take"
        )
    shortest = 60.0 / MAX_BPM
    if columns * seconds_per_column < shortest:
        return (
            f"it spans {columns * seconds_per_column:.3g} s, shorter than one cardiac cycle "
            f"at {MAX_BPM:g}/min ({shortest:g} s)"
        )
    if columns * seconds_per_column > MAX_SWEEP_SECONDS:
        return (
            f"it spans {columns * seconds_per_column:.3g} s, more than the "
            f"{MAX_SWEEP_SECONDS:g} s a display can plausibly sweep"
        )
    return None


def smooth_envelope(envelope: Float, dt: float) -> Float:
    """Fill columns without signal with zero, then a 30 ms median and 8 ms Gaussian filter.

    Both filters are capped at the envelope's length, so a tiny ``dt`` stays cheap.
    """
    filled = np.nan_to_num(envelope, nan=0.0)
    n = max(len(filled), 1)
    width = min(max(3, round(0.030 / dt) | 1), n | 1)
    out: Float = ndimage.gaussian_filter1d(
        ndimage.median_filter(filled, size=width, mode="nearest"),
        sigma=min(max(0.008 / dt, 0.5), float(n)),
        mode="nearest",
    )
    return out


def dominant_period(envelope: Float, dt: float) -> float | None:
    """The dominant period (s) of a signal sampled every ``dt`` s (autocorrelation), or ``None``.

    The signal is smoothed as :func:`detect_cycles` smooths it.
    """
    return _period(smooth_envelope(envelope, dt), dt)


def _period(e: Float, dt: float) -> float | None:
    """The dominant period (s) from the autocorrelation of the envelope, or ``None``."""
    x = e - e.mean()
    n = len(x)
    lo, hi = int(60.0 / MAX_BPM / dt), min(int(60.0 / MIN_BPM / dt), n - 2)
    if hi <= lo + 2 or not np.any(x):
        return None
    spectrum = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    ac /= ac[0]
    ac_unbiased = ac * n / (n - np.arange(n))
    lags = np.arange(lo, hi + 1)
    values = ac_unbiased[lags]
    peaks = [i for i in range(1, len(values) - 1) if values[i - 1] < values[i] >= values[i + 1]]
    good = [i for i in peaks if values[i] > 0.3]
    if not good:
        return None
    best = max(values[i] for i in good)
    first = next(i for i in good if values[i] >= 0.8 * best)  # avoid period multiples
    return float(lags[first]) * dt


def _fit(raw: Float, t: Float, lo: int, hi: int, degree: int) -> npt.NDArray[np.float64] | None:
    """Least-squares polynomial through the finite raw samples ``lo..hi`` (or ``None``)."""
    lo, hi = max(lo, 0), min(hi, len(raw) - 1)
    idx = np.arange(lo, hi + 1)
    idx = idx[np.isfinite(raw[idx])]
    if len(idx) < degree + 3:
        return None
    coef: npt.NDArray[np.float64] = np.polyfit(t[idx] - t[idx].mean(), raw[idx], degree)
    return np.append(coef, t[idx].mean())


def _extremum(raw: Float, e: Float, t: Float, at: int, half: int, sign: int) -> float:
    """Vertex of a parabola through the raw envelope within ``half`` samples of ``at``.

    ``sign`` is +1 for a maximum, -1 for a minimum; falls back to the smoothed value.
    """
    fit = _fit(raw, t, at - half, at + half, 2)
    if fit is None or sign * fit[0] >= 0:
        return float(e[at])
    a, b, c, _ = fit
    span = half * float(t[1] - t[0])
    x = float(np.clip(-b / (2 * a), -span, span))
    value = float(a * x * x + b * x + c)
    return value if np.isfinite(value) else float(e[at])


def detect_cycles(envelope: Float, dt: float) -> tuple[list[Cycle], Float]:
    """Complete cycles of a maximum-velocity envelope sampled every ``dt`` seconds.

    Columns without signal (NaN) count as zero velocity. Returns the cycles and the smoothed
    envelope they were found on; peaks and end-diastolic levels come from local fits to the
    raw envelope, so that smoothing does not flatten them.
    """
    raw = np.where(np.isfinite(envelope), envelope, 0.0)
    e = smooth_envelope(envelope, dt)
    period = _period(e, dt)
    if period is None:
        return [], e
    slope = np.gradient(e, dt)
    lo, hi = np.percentile(e, 5), np.percentile(e, 98)
    if hi - lo <= 0:
        return [], e
    # upstrokes: steepest points of rises through the middle of the range
    level = lo + 0.5 * (hi - lo)
    rising = np.flatnonzero((e[:-1] < level) & (e[1:] >= level))
    window = max(int(0.15 * period / dt), 2)
    ups: list[int] = []
    for r in rising.tolist():
        a = max(int(r) - window, 0)
        i = a + int(np.argmax(slope[a : r + window + 1]))
        if not ups or (i - ups[-1]) * dt > 0.5 * period:
            ups.append(i)
    feet: list[float | None] = []
    levels: list[int] = []
    for u in ups:
        a = int(u - 0.35 * period / dt)
        seg = e[max(a, 0) : u + 1]
        j = max(a, 0) + int(np.argmin(seg))
        floor = float(e[j])
        foot = u - (e[u] - floor) / slope[u] / dt if slope[u] > 0 else float(j)
        # the display starts above the diastolic floor (on an upstroke): the foot lies before
        truncated = j == 0 and a < 0 and e[0] > lo + 0.1 * (hi - lo)
        feet.append(None if truncated or foot < 0 else foot)
        levels.append(j)
    t: Float = np.arange(len(e), dtype=np.float64) * dt
    half = max(round(0.025 * period / dt), 2)  # fits over +-2.5% of the period
    cycles: list[Cycle] = []
    for k in range(len(ups) - 1):
        f0, f1 = feet[k], feet[k + 1]
        if f0 is None or f1 is None or f1 > len(e) - 1:
            continue
        i0, i1 = math.ceil(f0), math.floor(f1)
        if i1 - i0 < 3:
            continue
        seg = e[i0 : i1 + 1]
        mean = float(np.trapezoid(seg, t[i0 : i1 + 1]) / (t[i1] - t[i0]))
        peak = _extremum(raw, e, t, i0 + int(np.argmax(seg)), half, +1)
        # no lower than the raw envelope near the foot: 0 unless the flow reversed there
        near = raw[max(levels[k + 1] - half, 0) : levels[k + 1] + half + 1]
        end = max(_extremum(raw, e, t, levels[k + 1], half, -1), min(float(near.min()), 0.0))
        ejecting = np.where(seg > EJECTION_FRACTION * peak, seg, 0.0)
        ejection = float(np.trapezoid(ejecting, t[i0 : i1 + 1]))
        cycles.append(Cycle(f0 * dt, f1 * dt, peak, end, mean, ejection))
    return cycles, e
