"""Cardiac cycles in a time-based display (a maximum-velocity envelope, an M-mode trace).

A cycle runs from one end diastole (the foot of the systolic upstroke) to the next. The
foot is found by the intersecting-tangent method (the tangent at the steepest point of the
upstroke meets the diastolic level before it), which is stable where the minimum itself is
flat. Only complete cycles (both feet inside the display) count. An upstroke counts only
once the trace has fallen below a quarter of its range since the last one (hysteresis):
a trace opening just after a systolic peak read a first cycle at its late-systolic hump.

The cycles are cut at the dominant period of the trace, the first strong peak of its
unbiased autocorrelation between :data:`MIN_BPM` and :data:`MAX_BPM` (wider than the 15 to
300/min :mod:`usreview.processing.plausible` accepts). The peak must lie inside that range:
one at or beyond an edge (a repetition faster than :data:`MAX_BPM`, or still growing at
the longest lag searched) is refused with the reason (:attr:`Cycles.problem`), never
replaced by a multiple. A range that stopped at 200/min read 200/min as 100 and doubled
the VTI. When a peak of comparable strength lies at about half the chosen lag and cutting
at it gives cycles of consistent length, the half is taken: the chosen peak was a
sub-harmonic (every other beat, as with alternating beat strengths).

:func:`repetition` makes the same choice on an autocorrelation computed elsewhere (a cine's
frame similarity, :mod:`.cine`) and places the period below a sample; with few samples per
cycle it takes a third or half of the chosen lag when each part of it is a peak too.

A sweeping display (Region Flags, :class:`~usreview.dicom.ScrollingType`) overwrites its
oldest columns from left to right, so time jumps at the write point.
:func:`continuous_columns` finds it (a run of blank erase columns, else a jump between
adjacent columns far larger than any other) and returns the longer stretch of continuous
time, in which alone cycles are cut. A sweep whose write point cannot be found is refused:
where both sides look alike (in diastole) time still jumps, changing the length of the
cycle across it by up to a whole cycle. A display sweeping then scrolling never wraps, so
without a write point it is continuous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage, signal

from usreview.dicom import ScrollingType

__all__ = [
    "Cycle",
    "Cycles",
    "Repetition",
    "TimeSpan",
    "continuous_columns",
    "detect_cycles",
    "dominant_period",
    "repetition",
    "smooth_envelope",
    "sweep_problem",
]

Float = npt.NDArray[np.float64]

#: The heart rates (/min) searched for the dominant period; a period at either edge is refused.
MIN_BPM, MAX_BPM = 12.0, 320.0
EJECTION_FRACTION = 0.1
#: Columns of a time-based display (spectral Doppler, M-mode) closer than this are not
#: plausible: a spectral line needs at least one pulse, and no PRF reaches 100 kHz.
MIN_SECONDS_PER_COLUMN = 1e-5
#: The longest plausible sweep across a spectral or M-mode display (they show 1-12 s).
MAX_SWEEP_SECONDS = 60.0
_GOOD = 0.3  # autocorrelation a repeating cycle reaches
_MULTIPLE = 0.8  # the first peak reaching this share of the best is the period, not a multiple
_PROMINENCE = 0.1  # over the trough before it: a peak, not a ripple on the zero-lag lobe
_PART = 0.4  # of the chosen peak: a third or half of its lag is a period (sampled, few per cycle)
_HALF = (0.44, 0.56)  # "about half" the chosen lag
_COMPARABLE = 0.5  # of the chosen peak's autocorrelation, for the peak at half the lag
_CONSISTENT = (0.75, 1.33)  # every cycle cut at the half lag lies within this share of it
_ALTERNATION = 0.1  # odd and even cycles differ by less than this share of the half lag
_HYSTERESIS = 0.25  # an upstroke rises from below this share of the trace's range
#: Columns whose grey levels (5th to 95th percentile) span at most this show nothing: the
#: erase bar of a sweeping display, or columns not written yet.
_BLANK_GREY = 2.0
#: A jump between adjacent columns (mean absolute difference, rows smoothed over 4 pixels)
#: this many times the largest other one (3 columns away or more) is a sweep's write point.
#: On the simulator (48 strips, 5 and 30 dB) continuous strips reached 1.15; write points
#: that show, 1.2 to 4.7 (many show not at all: time jumps between alike columns).
_JUMP_STANDOUT = 1.5


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


@dataclass(frozen=True)
class Cycles:
    """What :func:`detect_cycles` found in a trace."""

    cycles: list[Cycle]
    """The complete cycles, in order (times from the trace's first sample)."""
    smooth: Float
    """The smoothed trace they were cut on."""
    period_s: float | None
    """The dominant period they were cut at, ``None`` when there is none."""
    problem: str | None = None
    """Why no cycle may be cut (a period outside the searched range), else ``None``."""


@dataclass(frozen=True)
class TimeSpan:
    """The columns ``start`` to ``stop - 1`` of a display, in which time runs continuously."""

    start: int
    stop: int
    note: str | None = None
    """Where a sweeping display's write point was found (``None``: not a sweep)."""
    problem: str | None = None
    """Why no stretch of continuous time can be trusted, else ``None``."""

    def describe(self, seconds_per_column: float) -> str | None:
        """A sentence for the reviewer on the sweep's write point (``None``: not a sweep)."""
        if self.note is None:
            return None
        seconds = (self.stop - self.start) * seconds_per_column
        return (
            f"The display sweeps (Region Flags): {self.note}; only columns {self.start} to "
            f"{self.stop - 1} ({seconds:.2f} s, the longer side of its write point) are measured."
        )


def sweep_problem(seconds_per_column: float, columns: int) -> str | None:
    """Why a time axis of ``columns`` columns, ``seconds_per_column`` apart, cannot hold cycles.

    ``None`` when it can: columns at least 10 us apart (:data:`MIN_SECONDS_PER_COLUMN`) and
    a sweep no shorter than one cardiac cycle at :data:`MAX_BPM` (0.19 s), which also holds
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


def continuous_columns(grey: npt.NDArray[np.generic], scrolling: ScrollingType) -> TimeSpan:
    """The longest stretch of columns of a time-based display in which time runs on.

    ``grey`` is the region's pixels (rows by columns). A scrolling (or unspecified) display
    is continuous throughout. A sweeping one (also sweeping then scrolling) loses its blank
    columns at either end (not written yet, or just erased); inside, its write point is the
    one run of blank columns (the erase bar), else the jump between adjacent columns that
    stands out (:data:`_JUMP_STANDOUT`). The longer side of it is returned. A sweeping
    display (that wraps) without either gets :attr:`TimeSpan.problem`: time may jump where
    the strip looks continuous (in diastole, say), which changes one cycle's length.
    """
    columns = grey.shape[1]
    if scrolling not in (ScrollingType.SWEEPING, ScrollingType.SWEEPING_THEN_SCROLLING):
        return TimeSpan(0, columns)
    g = np.asarray(grey, dtype=np.float64)
    low, high = np.percentile(g, [5, 95], axis=0)
    written = np.flatnonzero(high - low > _BLANK_GREY)
    if len(written) < 2:
        return TimeSpan(0, columns, problem="the sweeping display is blank")
    first, last = int(written[0]), int(written[-1]) + 1
    gaps = np.flatnonzero(np.diff(written) > 1)  # blank runs inside: after written[i]
    if len(gaps) == 1:
        i = int(gaps[0])
        cut = (int(written[i]) + 1, int(written[i + 1]))
        note = f"erase bar at columns {cut[0]} to {cut[1] - 1}"
    else:
        smooth = ndimage.gaussian_filter1d(g[:, written], 4.0, axis=0)
        jump = np.abs(np.diff(smooth, axis=1)).mean(axis=0)
        i = int(np.argmax(jump))
        others = jump.copy()
        others[max(i - 3, 0) : i + 4] = 0.0
        if len(jump) > 7 and jump[i] >= _JUMP_STANDOUT * float(others.max()):
            cut = (int(written[i]) + 1, int(written[i + 1]))
            note = f"time jumps between columns {cut[0] - 1} and {cut[1]}"
        elif scrolling == ScrollingType.SWEEPING_THEN_SCROLLING:  # scrolls once full
            return TimeSpan(first, last)
        else:
            return TimeSpan(
                first,
                last,
                problem=(
                    "the display sweeps (Region Flags), but its write point shows neither as "
                    "blank erase columns nor as a jump between columns: time may jump where "
                    "the strip looks continuous, changing the length of the cycle across it"
                ),
            )
    left, right = (first, cut[0]), (cut[1], last)
    start, stop = left if left[1] - left[0] >= right[1] - right[0] else right
    return TimeSpan(start, stop, note=note)


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
    """The period (s) :func:`detect_cycles` cuts a signal sampled every ``dt`` s at, or ``None``."""
    return detect_cycles(envelope, dt).period_s


@dataclass(frozen=True)
class _Period:
    lag: int | None  # chosen lag (samples), None: no period
    half: int | None = None  # a comparable peak at about half of it
    problem: str | None = None


def _period(e: Float, dt: float) -> _Period:
    """The dominant period (samples) from the unbiased autocorrelation of ``e``."""
    x = e - e.mean()
    n = len(x)
    hi = _longest_lag(n, dt)
    if hi <= _shortest_lag(dt) + 2 or not np.any(x):
        return _Period(None)
    spectrum = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(spectrum * np.conj(spectrum))[: hi + 1]
    return _choose(ac / ac[0] * n / (n - np.arange(hi + 1)), n, dt, "its trace")


def _shortest_lag(dt: float) -> int:
    return max(int(60.0 / MAX_BPM / dt), 1)


def _longest_lag(n: int, dt: float) -> int:
    """The longest lag searched in ``n`` samples: :data:`MIN_BPM`, or two thirds of them."""
    return min(int(60.0 / MIN_BPM / dt), (2 * n) // 3)  # overlap of a third at least


def _choose(values: Float, n: int, dt: float, subject: str) -> _Period:
    """The period in a normalized autocorrelation ``values`` (lag 0 first, 1.0) of ``n`` samples.

    ``subject`` names what repeats in a refusal ("its trace").
    """
    lo = _shortest_lag(dt)
    by_rate = int(60.0 / MIN_BPM / dt)
    hi = min(_longest_lag(n, dt), len(values) - 1)
    if hi <= lo + 2:
        return _Period(None)
    values = values[: hi + 1]
    found, _ = signal.find_peaks(values, prominence=_PROMINENCE)
    peaks = [int(i) for i in found if values[i] > _GOOD]
    edge = None  # still growing at the longest lag searched
    before = peaks[-1] if peaks else 0
    if values[hi] > max(values[hi - 1], _GOOD) and (
        values[hi] - values[before : hi + 1].min() >= _PROMINENCE
    ):
        edge = hi
    candidates = [*peaks, *([edge] if edge is not None else [])]
    if not candidates:
        return _Period(None)
    best = max(values[i] for i in candidates)
    lag = next(i for i in candidates if values[i] >= _MULTIPLE * best)  # not a multiple
    if lag < lo:
        return _Period(
            None,
            problem=(
                f"{subject} repeats every {lag * dt:.3g} s, faster than the {MAX_BPM:g}/min "
                "searched"
            ),
        )
    if lag == edge:
        why = (
            f"slower than the {MIN_BPM:g}/min searched"
            if by_rate <= hi
            else f"two thirds of the {n * dt:.3g} s shown: it may hold fewer than two cycles"
        )
        return _Period(
            None,
            problem=(
                f"{subject} repeats at the longest period searched ({hi * dt:.3g} s) or later, "
                + why
            ),
        )
    lower, upper = _HALF
    halves = [
        i
        for i in peaks
        if lo <= i and lower * lag <= i <= upper * lag and values[i] >= _COMPARABLE * values[lag]
    ]
    half = max(halves, key=lambda i: values[i]) if halves else None
    return _Period(lag, half)


@dataclass(frozen=True)
class Repetition:
    """What :func:`repetition` found: the period of a repeating signal, or why there is none."""

    period_s: float | None
    """The period, refined below a sample; ``None`` when there is none."""
    similarity: float | None = None
    """The highest autocorrelation at the period or a multiple that placed it (1.0: exact)."""
    multiples: int = 0
    """Peaks at multiples of the period that placed it (1: the first alone)."""
    problem: str | None = None
    """Why no period is given (one outside the searched range), else ``None``."""


def repetition(values: Float, n: int, dt: float, subject: str) -> Repetition:
    """The period of ``n`` samples ``dt`` s apart whose normalized autocorrelation is ``values``.

    ``values`` starts at lag 0 (1.0), unbiased (each lag the mean over the pairs it has).
    The lag is chosen as :func:`detect_cycles` chooses it (the same range, refusals and
    multiples; ``subject`` names what repeats in a refusal), without its halving, which
    needs cycles cut on a trace, but with a third or half of it taken where each part is a
    peak too (:func:`_fundamental`: few samples per cycle). It is then refined below a
    sample: the peaks at the period and at its multiples (while a quarter of the samples
    still pair up) are each placed by a parabola through the peak and its neighbours, and
    the period is the least-squares slope of their positions against their multiples.
    """
    found = _choose(values, n, dt, subject)
    if found.lag is None:
        return Repetition(None, problem=found.problem)
    hi = min(len(values) - 2, n - max(3, n // 4))  # a quarter of the samples in pairs
    period, placed = _fundamental(values, found.lag, max(_shortest_lag(dt), 2)), []
    for k in range(1, n):
        reach = max(1, round(0.15 * period))
        lo_k, hi_k = max(round(k * period) - reach, 1), min(round(k * period) + reach, hi)
        if hi_k < lo_k + 2:
            break
        at = lo_k + int(np.argmax(values[lo_k : hi_k + 1]))
        a, b, c = values[at - 1], values[at], values[at + 1]
        if not (b >= a and b >= c and b >= _PART * values[found.lag]):
            break  # no peak at this multiple: stop at the last one found
        placed.append((k, at + _vertex(a, b, c)))
        ks, lags = np.array([q for q, _ in placed], float), np.array([x for _, x in placed])
        period = float(ks @ lags / (ks @ ks))
    if not placed:
        return Repetition(found.lag * dt, float(values[found.lag]), 1)
    strongest = max(values[round(k * period)] for k, _ in placed)
    return Repetition(period * dt, float(strongest), len(placed))


def _fundamental(values: Float, lag: int, shortest: int) -> float:
    """``lag``, or a third or half of it where every part of it is a peak too.

    Samples that fall between two of them lower a peak (the period is not a whole number
    of samples), while a multiple may land on a whole number (7.5 samples per cycle: 15 for
    two): the multiple is then the highest peak. A part counts when the better of the two
    samples around each of its multiples reaches :data:`_PART` of the chosen peak and stands
    above the lowest value before the first by :data:`_PROMINENCE` (frames half a cycle
    apart differ: where a part is not a period, it falls in a trough).
    """
    for m in (3, 2):
        part = lag / m
        if part < shortest:
            continue
        heights = [max(values[int(k * part)], values[int(k * part) + 1]) for k in range(1, m)]
        dip = float(np.min(values[1 : int(part) + 1]))
        if min(heights) >= _PART * values[lag] and min(heights) - dip >= _PROMINENCE:
            return part
    return float(lag)


def _vertex(a: float, b: float, c: float) -> float:
    """Offset (samples, within +-0.5) of the vertex of the parabola through ``a, b, c``."""
    curve = a - 2 * b + c
    return float(np.clip(0.5 * (a - c) / curve, -0.5, 0.5)) if curve < 0 else 0.0


def _consistent(cycles: list[Cycle], period: float) -> bool:
    """Whether ``cycles`` (cut at ``period``) last about ``period`` each, not long-short."""
    lengths = np.array([c.period_s for c in cycles])
    if len(lengths) < 2:
        return False
    low, high = _CONSISTENT
    if not np.all((lengths >= low * period) & (lengths <= high * period)):
        return False
    return bool(abs(lengths[::2].mean() - lengths[1::2].mean()) <= _ALTERNATION * period)


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


def detect_cycles(envelope: Float, dt: float) -> Cycles:
    """Complete cycles of a maximum-velocity envelope sampled every ``dt`` seconds.

    Columns without signal (NaN) count as zero velocity. Returns the cycles, the smoothed
    envelope they were found on and the period they were cut at; peaks and end-diastolic
    levels come from local fits to the raw envelope, so that smoothing does not flatten
    them. A period outside the searched range gives no cycles and the reason.
    """
    raw = np.where(np.isfinite(envelope), envelope, 0.0)
    e = smooth_envelope(envelope, dt)
    found = _period(e, dt)
    if found.lag is None:
        return Cycles([], e, None, found.problem)
    if found.half is not None:
        halves = _cut(raw, e, dt, found.half * dt)
        if _consistent(halves, found.half * dt):
            return Cycles(halves, e, found.half * dt)
    return Cycles(_cut(raw, e, dt, found.lag * dt), e, found.lag * dt)


def _cut(raw: Float, e: Float, dt: float, period: float) -> list[Cycle]:
    """The complete cycles of the smoothed envelope ``e``, about ``period`` s long."""
    slope = np.gradient(e, dt)
    lo, hi = np.percentile(e, 5), np.percentile(e, 98)
    if hi - lo <= 0:
        return []
    # upstrokes: steepest points of rises through the middle of the range, each from
    # below the lower quarter (hysteresis): a trace that opens after a systolic peak does
    # not start a cycle at its late-systolic hump.
    level = lo + 0.5 * (hi - lo)
    rising = np.flatnonzero((e[:-1] < level) & (e[1:] >= level))
    below = np.flatnonzero(e < lo + _HYSTERESIS * (hi - lo))
    window = max(int(0.15 * period / dt), 2)
    ups: list[int] = []
    armed = 0  # a rise counts once the trace has been below the lower quarter since here
    for r in rising.tolist():
        k = int(np.searchsorted(below, armed))
        if k == len(below) or below[k] > r:
            continue
        armed = r
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
    return cycles
