"""Spectral Doppler physics: maximum-velocity waveforms, cycles, and the displayed spectrogram.

The velocity waveform of one cycle is ``v(phi) = EDV + (PSV - EDV) f(phi)`` with a
shape ``f`` normalised to ``[0, 1]`` and ``f(0) = f(1) = 0`` (end diastole at the
cycle boundary), so beats with different periods and peaks join continuously.

The spectrum at a time with maximum velocity ``vmax`` comes from scatterers in
parabolic flow ``v(r) = vmax (1 - r^2/R^2)`` seen through a Gaussian sample volume
of width ``q R`` centred on the axis: the power density is then
``p(v) ~ exp(-(1 - v/vmax) / (2 q^2))`` on ``[0, vmax]`` (uniform for CW, ``q`` infinite).
It is averaged over the analysis window (Hann), broadened by a Gaussian whose width is
the window's frequency resolution plus a fraction of the velocity (intrinsic and
transit-time broadening), high-pass (wall) filtered, given exponentially distributed
speckle (one periodogram per column), white noise at the SNR, and log-compressed into
8 bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from usreview.simulate.speckle import SOUND_SPEED_CM_S

__all__ = [
    "SHAPES",
    "Beats",
    "Spectrum",
    "draw_beats",
    "shape_function",
    "speckled_display",
    "spectrogram",
]

Float = npt.NDArray[np.float64]

_GRID = 4096

# wrapped Gaussians (centre phase, width, height) per waveform
_GAUSSIANS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "carotid": ((0.10, 0.045, 1.0), (0.27, 0.06, 0.45), (0.55, 0.22, 0.30)),
    "renal": ((0.10, 0.045, 1.0), (0.27, 0.07, 0.75), (0.55, 0.25, 0.55)),
}
SHAPES: tuple[str, ...] = ("carotid", "renal", "aortic")


def _shape_samples(name: str, ejection: float) -> Float:
    phase = np.arange(_GRID) / _GRID
    if name == "aortic":
        x = np.clip(phase / ejection, 0.0, 1.0)
        raw = x**1.2 * (1.0 - x) ** 1.8
    else:
        raw = np.zeros(_GRID)
        for centre, width, height in _GAUSSIANS[name]:
            for k in (-1, 0, 1):
                raw += height * np.exp(-0.5 * ((phase - centre - k) / width) ** 2)
        raw = np.roll(raw, -int(np.argmin(raw)))
    out: Float = (raw - raw.min()) / (raw.max() - raw.min())
    return out


def shape_function(name: str, ejection: float = 0.35) -> tuple[Callable[[Float], Float], float]:
    """Return the cycle shape ``f(phase)`` and its mean over one cycle.

    ``ejection`` is the ejection fraction of the cycle for ``"aortic"`` (flow only
    during ejection, zero in diastole).
    """
    samples = _shape_samples(name, ejection)
    closed = np.append(samples, samples[0])
    grid = np.arange(_GRID + 1) / _GRID

    def f(phase: Float) -> Float:
        out: Float = np.interp(np.mod(phase, 1.0), grid, closed)
        return out

    return f, float(samples.mean())


@dataclass(frozen=True)
class Beats:
    """Consecutive cardiac cycles: start times, periods and peak velocities."""

    starts: Float
    periods: Float
    psv: Float
    edv: float
    shape: Callable[[Float], Float]
    shape_mean: float

    def vmax(self, t: Float) -> Float:
        """The true maximum velocity (cm/s, magnitude) at times ``t`` (s)."""
        i = np.clip(np.searchsorted(self.starts, t, side="right") - 1, 0, len(self.starts) - 1)
        phase = (t - self.starts[i]) / self.periods[i]
        out: Float = self.edv + (self.psv[i] - self.edv) * self.shape(phase)
        return out

    def complete(self, t0: float, t1: float) -> npt.NDArray[np.intp]:
        """Indices of the cycles lying wholly within ``[t0, t1]``."""
        ends = self.starts + self.periods
        return np.flatnonzero((self.starts >= t0) & (ends <= t1))


def draw_beats(
    rng: np.random.Generator,
    *,
    duration_s: float,
    heart_rate_bpm: float,
    psv: float,
    edv: float,
    hr_variability: float,
    psv_variability: float,
    shape: str,
    ejection: float = 0.35,
) -> Beats:
    """Draw cycles covering ``[-window, duration_s + window]`` with beat-to-beat variability."""
    mean_period = 60.0 / heart_rate_bpm
    f, mean_f = shape_function(shape, ejection)
    starts, periods, peaks = [], [], []
    t = -float(rng.uniform(0.2, 1.0)) * mean_period
    while t < duration_s + 0.1:
        period = mean_period * (1.0 + hr_variability * float(np.clip(rng.standard_normal(), -3, 3)))
        peak = psv * (1.0 + psv_variability * float(np.clip(rng.standard_normal(), -3, 3)))
        starts.append(t)
        periods.append(period)
        peaks.append(max(peak, edv + 1.0))
        t += period
    return Beats(np.array(starts), np.array(periods), np.array(peaks), edv, f, mean_f)


@dataclass(frozen=True)
class Spectrum:
    """Display geometry and physics of one spectral Doppler strip.

    Row ``r`` (0 at the top) shows velocity ``(baseline - r) * dv`` (cm/s, positive
    toward the probe); column ``c`` the time ``c * dt`` (s).
    """

    rows: int
    columns: int
    baseline: int
    dv: float
    dt: float
    frequency_mhz: float
    angle_deg: float
    window_s: float
    broadening: float
    sample_volume: float | None  # q = sample-volume width / vessel radius; None: uniform (CW)
    wall_filter: float  # cm/s; the power below it is suppressed (high-pass clutter filter)

    def velocities(self) -> Float:
        """Signed velocity at each row centre (cm/s)."""
        out: Float = (self.baseline - np.arange(self.rows, dtype=np.float64)) * self.dv
        return out

    def window_resolution(self) -> float:
        """Standard deviation (cm/s) of the analysis window's velocity resolution."""
        cos = math.cos(math.radians(self.angle_deg))
        hz_per_cm_s = 2.0 * self.frequency_mhz * 1e6 * cos / SOUND_SPEED_CM_S
        return 1.44 / self.window_s / 2.3548 / hz_per_cm_s


def _cdf(u: Float, vmax: Float, q: float | None) -> Float:
    x = np.clip(u / np.maximum(vmax, 1e-9), 0.0, 1.0)
    if q is None:
        return x
    k = 1.0 / (2.0 * q * q)
    out: Float = (np.exp(k * (x - 1.0)) - math.exp(-k)) / (1.0 - math.exp(-k))
    return out


def mean_spectrum(spec: Spectrum, beats: Beats, sign: int, subsamples: int = 7) -> Float:
    """Expected power per row and column, total signal power 1 per column."""
    v = spec.velocities()
    lo = sign * (v - spec.dv / 2.0)
    hi = sign * (v + spec.dv / 2.0)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    weights = np.cos(np.pi * offsets) ** 4  # Hann window, squared (power)
    weights /= weights.sum()
    times = np.arange(spec.columns) * spec.dt
    power = np.zeros((spec.rows, spec.columns))
    for offset, weight in zip(offsets, weights, strict=True):
        vmax = beats.vmax(times + offset * spec.window_s)[None, :]
        q = spec.sample_volume
        power += weight * (_cdf(hi[:, None], vmax, q) - _cdf(lo[:, None], vmax, q))
    # broadening: source row j (velocity u_j) spreads over target rows i
    sigma = np.hypot(spec.broadening * np.abs(v) / 2.3548, spec.window_resolution())
    edges_hi = (v + spec.dv / 2.0)[:, None]
    edges_lo = (v - spec.dv / 2.0)[:, None]
    spread = ndtr((edges_hi - v[None, :]) / sigma[None, :]) - ndtr(
        (edges_lo - v[None, :]) / sigma[None, :]
    )
    wall = np.clip(np.abs(v) / max(spec.wall_filter, 1e-9), 0.0, 1.0) ** 4
    out: Float = wall[:, None] * (spread @ power)
    return out


def spectrogram(
    rng: np.random.Generator,
    spec: Spectrum,
    beats: Beats,
    *,
    sign: int,
    snr_db: float,
    dynamic_range_db: float,
) -> tuple[npt.NDArray[np.uint8], float, float]:
    """Return the 8-bit display, the reference power (grey 255) and the noise power per row.

    ``grey = 255 (10 log10(P / P_ref) + DR) / DR``, clipped; ``P_ref`` is 3 dB above the
    largest expected signal power of any pixel. SNR is total signal power over total
    noise power across the displayed velocity range, per column.
    """
    mean = mean_spectrum(spec, beats, sign)
    return speckled_display(rng, mean, snr_db=snr_db, dynamic_range_db=dynamic_range_db)


def speckled_display(
    rng: np.random.Generator, mean: Float, *, snr_db: float, dynamic_range_db: float
) -> tuple[npt.NDArray[np.uint8], float, float]:
    """The 8-bit display of the expected spectrum ``mean`` (rows by columns) with speckle
    and noise, its reference power and the noise power per row (see :func:`spectrogram`)."""
    noise_power = 10.0 ** (-snr_db / 10.0) / mean.shape[0]
    power = mean * rng.exponential(size=mean.shape) + noise_power * rng.exponential(size=mean.shape)
    reference = float(mean.max()) * 10.0**0.3
    db = 10.0 * np.log10(np.maximum(power / reference, 1e-30))
    grey = np.clip(np.rint(255.0 * (db + dynamic_range_db) / dynamic_range_db), 0, 255)
    return grey.astype(np.uint8), reference, noise_power
