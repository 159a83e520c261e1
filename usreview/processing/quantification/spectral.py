"""The spectral Doppler display: its region, calibration, power and maximum-velocity envelope.

Steps (see ``shared/notes/SCIENCE.md``):

1. :func:`spectral_region` finds the PW or CW region of the Sequence of Ultrasound Regions.
2. :func:`calibrate` reads its calibration: the baseline row (where the velocity is zero,
   from the reference pixel and its physical value), cm/s per row, s per column.
3. :func:`grey_to_power` undoes the 8-bit log compression for an *assumed* display dynamic
   range (default 50 dB; scanners use 40-60 dB and do not record it): grey 255 is the
   reference power, grey 0 is ``-DR`` dB. A wrong guess (40 vs 60 dB) costs about 3% PSV.
4. :func:`flow_side` keeps the side of the baseline that holds the signal, ordered from the
   baseline outward, and estimates the noise floor from the other side (or the outer rows):
   a pixel median over ``ln 2`` for the knee, and the mean (:func:`noise_floor`) for the
   edge refinement.
   Of the sides holding at least a tenth of the signal power, the one whose envelope
   reaches the higher speeds (the systolic peak) is kept, so concentrated reversed
   diastolic flow does not win over the forward flow. A baseline outside the region is kept
   as an offset: speeds count from the baseline.
5. :func:`mgm_envelope` traces the maximum velocity with the modified geometric method
   (Fernando, Mathews & Clark, IEEE TBME 51(11), 2004): the noise floor is subtracted, the
   spectrum integrated outward, and the knee is where the integrated spectrum lies furthest
   above the line from the origin to its maximum. Columns without signal get NaN.
   :func:`aliasing_problem` then refuses a spectrum that does not fit its velocity scale:
   an envelope reaching the far edge of its side, or strong signal at the far edge of the
   other side (the peaks wrapped around).
6. Optionally (``edge=True``) the knee moves to the area midpoint of the spectral edge: where
   the integrated spectrum's slope just below the knee, extrapolated, reaches its plateau.
   For a locally flat spectrum broadened symmetrically this is the true maximum velocity,
   provided the noise subtracted is the mean noise: the whole envelope is then traced
   against ``noise_mean``. Against the pixel median over ``ln 2`` (29% above the mean of a
   3-column average) the integrated spectrum turned down under the edge's tail, and CW
   peak velocity read 2.7% low at 5 dB (VTI 3.2%).
7. PW envelopes (no edge refinement) then lose the window broadening: :func:`window_broadening`
   reads its SD from the widths of the spectral edges, :func:`deconvolve_knee` removes the
   knee of a stationary spectrum in quadrature. Without it EDV 0 read 4 cm/s (RI 0.95).
8. PW diastolic flow may reverse: :func:`reversed_flow` traces the other side (the same
   MGM, noise and deconvolution) and keeps the columns where its power over the rows next
   to the baseline is :data:`REVERSAL_DOMINANCE` times the forward side's over the same
   rows, in runs of at least :data:`MIN_REVERSAL_SECONDS`. A mirror image (a weaker copy of
   the forward spectrum, at the same time) never dominates; noise and the symmetric spectrum
   of flow near zero dominate in scattered columns only. The envelope is then signed:
   negative where the flow reversed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from usreview.dicom import (
    PhysicalUnits,
    RegionDataType,
    UltrasoundInstance,
    UltrasoundRegion,
)
from usreview.processing.errors import NotApplicable
from usreview.processing.quantification.cycles import sweep_problem

__all__ = [
    "FlowSide",
    "SpectralCalibration",
    "aliasing_problem",
    "calibrate",
    "deconvolve_knee",
    "flow_side",
    "grey_to_power",
    "mgm_envelope",
    "noise_floor",
    "region_problem",
    "reversed_flow",
    "spectral_region",
    "window_broadening",
]

Float = npt.NDArray[np.float64]
_SPECTRAL = (RegionDataType.PW_SPECTRAL_DOPPLER, RegionDataType.CW_SPECTRAL_DOPPLER)
#: The widest velocity scale a spectral display can plausibly span (cm/s): blood reaches
#: some 7 m/s, and an angle correction near 80 degrees multiplies a scale by about 6.
MAX_VELOCITY_SCALE = 10_000.0
#: A column has signal when its integrated noise-subtracted power exceeds this many
#: standard deviations of integrated noise.
SIGNAL_SIGMAS = 6.0
#: A side holding less than this fraction of the strongest side's signal power (a mirror
#: image, noise) is not taken for the flow, however fast its envelope.
MIN_SIDE_POWER = 0.1
#: An envelope within this many rows of the far edge of its side is clipped (or aliased).
EDGE_ROWS = 2
#: Wrap-around: the far-edge rows of the other side hold at least this fraction of the
#: signal's power (its 99.5th percentile); spectral tails and mirror images stay below 0.1.
WRAP_FRACTION = 0.1
#: Columns that must show clipping or wrap-around before a spectrum is refused; on the
#: simulator the aliased traces showed 3 to 70, the others none.
ALIAS_COLUMNS = 3
#: The MGM knee of a stationary spectrum (zero velocity, Gaussian window broadening of SD
#: ``sigma_w`` behind a wall filter) in units of ``sigma_w``, measured on the simulator.
STATIONARY_KNEE = 2.15
#: Edge widths (:func:`window_broadening`) are read only where the envelope lies this many
#: rows out: closer in, the wall filter cuts the edge.
MIN_EDGE_ROWS = 8
#: The noise floor is the median of the mean powers of tiles of up to this many rows by
#: columns (:func:`noise_floor`).
NOISE_TILE = 8
#: Reversed flow must fill runs of columns at least this long (s): diastolic reversal lasts
#: a good part of a cycle (100-500 ms), isolated noise columns do not.
MIN_REVERSAL_SECONDS = 0.04
#: A column holds reversed flow when the other side's power, next to the baseline, is this
#: many times the forward side's. On the simulator (5-30 dB) reversal faster than 3 cm/s
#: gave ratios of 29 or more, flow within 1 cm/s of zero 0.2-2.5, forward flow below 0.5.
REVERSAL_DOMINANCE = 4.0


def spectral_region(instance: UltrasoundInstance) -> UltrasoundRegion:
    """The largest PW or CW spectral region that :func:`region_problem` accepts.

    Raises :class:`NotApplicable` when there is none (the reason names what is wrong).
    """
    spectral = [r for r in instance.regions if r.data_type in _SPECTRAL]
    if not spectral:
        raise NotApplicable(
            "no PW or CW spectral Doppler region in the Sequence of Ultrasound Regions"
        )
    problems = [region_problem(r, instance.rows, instance.columns) for r in spectral]
    usable = [r for r, problem in zip(spectral, problems, strict=True) if problem is None]
    if not usable:
        raise NotApplicable(f"the spectral region is not usable: {problems[0]}")
    return max(usable, key=lambda r: r.width * r.height)


def region_problem(region: UltrasoundRegion, rows: int, columns: int) -> str | None:
    """Why a spectral region of a ``rows`` by ``columns`` image cannot be measured, or ``None``.

    It needs units s and cm/s, finite non-zero deltas and a finite baseline value, bounds
    inside the image, and a plausible sweep (:func:`.cycles.sweep_problem`).
    """
    if region.units_x != PhysicalUnits.SECONDS or region.units_y != PhysicalUnits.CM_PER_SECOND:
        return (
            f"it is not calibrated in s and cm/s (units {region.units_x.ucum} "
            f"by {region.units_y.ucum})"
        )
    problem = region.deltas_problem()
    if problem is not None:
        return problem
    if not math.isfinite(region.reference_value_y):
        return (
            f"its ReferencePixelPhysicalValueY is {region.reference_value_y:g}; it must be finite"
        )
    outside = region.bounds_problem(rows, columns)
    if outside is not None:
        return outside
    scale = region.height * abs(region.delta_y)
    if scale > MAX_VELOCITY_SCALE:
        return (
            f"its velocity scale spans {scale:.3g} cm/s, more than the "
            f"{MAX_VELOCITY_SCALE:g} cm/s any Doppler display shows"
        )
    sweep = sweep_problem(abs(region.delta_x), region.width)
    return None if sweep is None else f"its time axis is implausible: {sweep}"


@dataclass(frozen=True)
class SpectralCalibration:
    """Calibration of a spectral region, in region-local pixels.

    ``baseline_row`` is the (fractional) row of zero velocity, counted from the region's top;
    ``velocity_per_row`` is signed (cm/s for one row down, negative when velocity grows
    upward, as usual); ``seconds_per_column`` is positive for time running to the right.
    """

    region: UltrasoundRegion
    baseline_row: float
    velocity_per_row: float
    seconds_per_column: float

    @property
    def rows(self) -> int:
        """Rows of the region."""
        return self.region.height

    @property
    def columns(self) -> int:
        """Columns of the region."""
        return self.region.width


def calibrate(region: UltrasoundRegion) -> SpectralCalibration:
    """The calibration: row ``r`` shows ``(r - baseline_row) * velocity_per_row`` cm/s."""
    # physical = ref_value + (pixel - origin) * delta  =>  zero at origin - ref_value / delta
    baseline_image_row = region.origin_y - region.reference_value_y / region.delta_y
    return SpectralCalibration(
        region=region,
        baseline_row=baseline_image_row - region.min_y0,
        velocity_per_row=region.delta_y,
        seconds_per_column=abs(region.delta_x),
    )


def grey_to_power(grey: npt.NDArray[np.uint8], dynamic_range_db: float) -> Float:
    """Linear power relative to grey 255, assuming ``grey = 255 (10 log10 P + DR) / DR``."""
    if not 10.0 <= dynamic_range_db <= 120.0:
        raise ValueError(f"argument 'dynamic_range_db' {dynamic_range_db} not in [10, 120] dB")
    lut = 10.0 ** ((np.arange(256) / 255.0 - 1.0) * dynamic_range_db / 10.0)
    out: Float = lut[np.asarray(grey, dtype=np.uint8)]
    return out


@dataclass(frozen=True)
class FlowSide:
    """The side of the baseline that holds the signal, rows ordered outward from zero velocity.

    ``power[k, t]`` is the power at velocity magnitude ``(k + offset_rows) * cm_s_per_row``;
    ``offset_rows`` is 0 unless the baseline lies outside the region, where it is the rows
    from the baseline to the region's nearest row. ``sign`` is +1 for positive velocities
    (toward the probe), -1 for negative. ``noise`` is the noise floor the MGM knee is
    traced against: the pixel median over ``ln 2``, the mean for exponential speckle but
    above it once columns are averaged (29% for 3). ``noise_mean`` is the mean noise power
    per pixel (:func:`noise_floor`), which the edge refinement subtracts: it measures area.
    ``opposite`` is the other side's power, rows also ordered outward (no rows when the
    baseline lies at or beyond the region's edge).
    """

    power: Float
    sign: int
    cm_s_per_row: float
    noise: float
    signal_ratio: float
    offset_rows: float = 0.0
    opposite: Float | None = None
    noise_mean: float | None = None


def noise_floor(*pixels: Float) -> float:
    """The mean noise power of ``pixels`` (rows by columns), robust to patches of signal.

    The median over tiles of :data:`NOISE_TILE` by :data:`NOISE_TILE` pixels of the tiles'
    mean power: a tile mean averages some 64 speckle samples, so its median sits within
    0.5% of the mean whatever the pixels' distribution (exponential speckle, averaged over
    columns, clipped at the display's floor), while mirror images and wrapped peaks spoil
    only their own tiles. A pixel median over ``ln 2`` (exact for exponential speckle only)
    read the noise of a 3-column average 29% high; MGM then cut the spectral edge short.
    """
    means = []
    for block in pixels:
        rows, cols = block.shape
        if rows == 0 or cols == 0:
            continue
        tr, tc = min(NOISE_TILE, rows), min(NOISE_TILE, cols)
        tiles = block[: rows - rows % tr, : cols - cols % tc].reshape(rows // tr, tr, -1, tc)
        means.append(tiles.mean(axis=(1, 3)).ravel())
    if not means:
        raise ValueError("argument 'pixels' holds no pixels")
    return float(np.median(np.concatenate(means)))


def flow_side(power: Float, calibration: SpectralCalibration, wall_rows: int = 3) -> FlowSide:
    """Pick the side of the baseline that holds the flow; estimate the noise floor.

    Of the sides with at least :data:`MIN_SIDE_POWER` of the most power above the noise, the
    one whose MGM envelope reaches the higher speeds (90th percentile over the columns).
    """
    rows = power.shape[0]
    base = round(calibration.baseline_row)
    offset = 0.0
    if not 0 <= base < rows:  # the baseline lies outside: all rows are on one side
        base = -1 if calibration.baseline_row < 0 else rows
        # velocities start at the region's edge row, this many rows from the baseline
        edge = 0.0 if base < 0 else float(rows - 1)
        offset = abs(calibration.baseline_row - edge)
    below = power[max(base, 0) :] if base < rows else power[:0]
    above = power[: min(base, rows - 1) + 1][::-1] if base >= 0 else power[:0]
    sides = [s for s in (above, below) if s.shape[0] > wall_rows]
    if not sides:
        raise NotApplicable("the spectral region has no rows beside its baseline")

    # noise from the median (robust to mirror images): exponential speckle, mean = median / ln 2
    def outer(side: Float) -> Float:
        return side[max(wall_rows, side.shape[0] - max(side.shape[0] // 10, 4)) :]

    def excess(side: Float, noise: float) -> float:
        return float(np.mean(side[wall_rows:]) - noise)

    def peak(side: Float, noise: float) -> float:
        trial = FlowSide(side, 1, 1.0, noise, 0.0, offset)
        return float(np.percentile(np.nan_to_num(mgm_envelope(trial, wall_rows)), 90))

    pool = np.concatenate([outer(s).ravel() for s in sides])
    noise0 = float(np.median(pool)) / math.log(2.0)
    total = [excess(s, noise0) * (s.shape[0] - wall_rows) for s in sides]
    most = max(total)
    strong = [s for s, t in zip(sides, total, strict=True) if t > 0 and t >= MIN_SIDE_POWER * most]
    if len(strong) > 1:
        pick = max(strong, key=lambda s: peak(s, noise0))
    else:  # one side with flow, or none (noise only)
        pick = sides[total.index(most)]
    other = [s for s in sides if s is not pick]
    # the other side's noise, unless it holds flow too (reversed flow, wrapped peaks)
    if other and other[0].shape[0] >= 8 + wall_rows and not any(s is other[0] for s in strong):
        quiet = other[0][wall_rows:]
    else:
        quiet = outer(pick)
    noise = float(np.median(quiet)) / math.log(2.0)
    up_is_positive = calibration.velocity_per_row < 0
    sign = 1 if (pick is above) == up_is_positive else -1
    ratio = max(excess(pick, noise), 0.0) / max(noise, 1e-30)
    opposite = other[0] if other else power[:0]
    step = abs(calibration.velocity_per_row)
    return FlowSide(pick, sign, step, noise, ratio, offset, opposite, noise_floor(quiet))


def aliasing_problem(
    side: FlowSide, envelope: Float, calibration: SpectralCalibration, wall_rows: int = 3
) -> str | None:
    """Why the spectrum does not fit its velocity scale (aliased or clipped), or ``None``.

    Refused when, in at least :data:`ALIAS_COLUMNS` columns, the envelope comes within
    :data:`EDGE_ROWS` rows of the far edge of its side, or the far-edge rows of the other
    side hold more than :data:`WRAP_FRACTION` of the signal's power (and 4 times the noise):
    the peaks wrapped around to the other side.
    """
    rows = side.power.shape[0]
    position = envelope / side.cm_s_per_row - side.offset_rows - 0.5
    clipped = int(np.sum(np.nan_to_num(position, nan=-1.0) >= rows - 1 - EDGE_ROWS))
    wrapped = 0
    opposite = side.opposite
    if opposite is not None and opposite.shape[0] >= 8 + wall_rows:
        # mean over the far-edge rows and 3 columns: 9 speckle samples, so that noise
        # alone stays below 4 times its mean (chance about 1e-8 per column)
        edge = np.mean(opposite[-(EDGE_ROWS + 1) :], axis=0)
        far = np.convolve(edge, np.ones(3) / 3.0, mode="same") - side.noise
        signal = float(np.percentile(side.power[wall_rows:], 99.5)) - side.noise
        wrapped = int(np.sum((far > WRAP_FRACTION * signal) & (far > 3.0 * side.noise)))
    if max(clipped, wrapped) < ALIAS_COLUMNS:
        return None
    where = (
        f"the traced envelope reaches the edge of the scale "
        f"({(rows + side.offset_rows) * side.cm_s_per_row:.1f} cm/s) in {clipped} columns"
        if clipped >= ALIAS_COLUMNS
        else f"strong signal sits at the far edge of the other side in {wrapped} columns"
    )
    above = (side.sign > 0) == (calibration.velocity_per_row < 0)
    move = "lower" if above else "raise"
    return (
        f"aliased or clipped spectrum: {where}; {move} the baseline or raise the scale "
        "(velocity range) and acquire again"
    )


def _edge_intersection(s: Float, knee: Float, k_max: npt.NDArray[np.intp], s_max: Float) -> Float:
    """Where the integrated spectrum's slope below the knee reaches its maximum (area midpoint).

    The slope is a least-squares line through the rows ``0.15 knee`` (at least 4) below it.
    """
    n_rows, n_cols = s.shape
    cols = np.arange(n_cols)
    k0 = np.clip(np.rint(knee).astype(int), 1, n_rows - 1)
    w = np.maximum(4, np.rint(0.15 * k0)).astype(int)
    lo = np.maximum(k0 - w, 0)
    # least-squares line through s[lo..k0]: the knee is picked where speckle lifted s, so a
    # line through s[k0] itself came out steep and high (PV -0.9% on the simulator)
    k = np.broadcast_to(np.arange(n_rows, dtype=np.float64)[:, None], s.shape)
    zero = np.zeros((1, n_cols))
    sums = [np.concatenate([zero, np.cumsum(a, axis=0)]) for a in (s, k * s, k, k * k)]
    n = (k0 - lo + 1).astype(np.float64)
    s1, sk, k1, kk = ((c[k0 + 1, cols] - c[lo, cols]) / n for c in sums)
    density = (sk - k1 * s1) / np.maximum(kk - k1 * k1, 1e-12)
    level = s1 + density * (k0 - k1)  # the line at k0
    with np.errstate(invalid="ignore", divide="ignore"):
        cross = k0 + (s_max - level) / density
    ok = np.isfinite(cross) & (density > 0) & (cross >= knee) & (cross <= k_max + 0.5)
    out: Float = np.where(ok, cross - 0.5, knee)
    return out


def _integrated(side: FlowSide, wall_rows: int, noise: float | None = None) -> Float:
    """The noise-subtracted spectrum integrated outward, rows near the baseline left out.

    ``noise`` is the power subtracted per pixel (default ``side.noise``).
    """
    p = side.power - (side.noise if noise is None else noise)
    # the wall filter region (rows near the baseline) carries no usable envelope information
    p[: max(math.ceil(wall_rows - side.offset_rows), 0)] = 0.0
    out: Float = np.cumsum(p, axis=0)
    return out


def window_broadening(side: FlowSide, envelope: Float, wall_rows: int = 3) -> float:
    """The velocity-independent spectral broadening SD (cm/s) of a traced spectrum.

    Per column, the edge of a spectrum broadened by a Gaussian of SD ``sigma`` holds
    ``0.399 sigma d`` power above the envelope, ``d`` the density just below it. The fit
    ``sigma^2 = sigma_w^2 + (b v)^2`` over the columns whose envelope lies at least
    :data:`MIN_EDGE_ROWS` rows out separates the window's resolution ``sigma_w`` from the
    broadening proportional to velocity (intrinsic, transit time). NaN without such columns.
    """
    s = _integrated(side, wall_rows)
    n_rows, n_cols = s.shape
    cols = np.arange(n_cols)
    k_max = np.argmax(s, axis=0)
    position = envelope / side.cm_s_per_row - side.offset_rows - 0.5
    ok = np.isfinite(position) & (position >= MIN_EDGE_ROWS)
    k0 = np.clip(np.rint(np.nan_to_num(position)).astype(int), 1, n_rows - 1)
    lo = np.maximum(k0 - np.maximum(4, np.rint(0.15 * k0)).astype(int), 0)
    density = (s[k0, cols] - s[lo, cols]) / np.maximum(k0 - lo, 1)
    ok &= density > 0
    if np.sum(ok) < 3:
        return math.nan
    sigma = (s[k_max, cols] - s[k0, cols])[ok] / (0.399 * density[ok]) * side.cm_s_per_row
    v = envelope[ok]
    design = np.column_stack([np.ones_like(v), v * v])
    (intercept, _), *_ = np.linalg.lstsq(design, sigma * sigma, rcond=None)
    return math.sqrt(max(float(intercept), 0.0))


def deconvolve_knee(envelope: Float, sigma_w: float) -> Float:
    """The envelope with the knee of a stationary spectrum removed in quadrature.

    A spectrum at zero velocity, broadened by the window (SD ``sigma_w``) and cut by the
    wall filter, still shows its MGM knee :data:`STATIONARY_KNEE` ``sigma_w`` out; widths of
    independent broadenings add in quadrature, so ``v = sqrt(knee^2 - (K sigma_w)^2)``.
    The correction fades with speed (0.3% at 10 sigma_w). Unchanged when ``sigma_w`` is NaN.
    """
    if not math.isfinite(sigma_w):
        return envelope
    offset = STATIONARY_KNEE * sigma_w
    out: Float = np.sqrt(np.maximum(envelope * envelope - offset * offset, 0.0))
    return out


def mgm_envelope(side: FlowSide, wall_rows: int = 3, edge: bool = False) -> Float:
    """Maximum velocity (cm/s, magnitude) per column by MGM; NaN where a column has no signal.

    With ``edge`` the knee moves to the edge's area midpoint (:func:`_edge_intersection`),
    all traced against ``side.noise_mean`` (when known) instead of ``side.noise``.
    """
    noise = side.noise if side.noise_mean is None or not edge else side.noise_mean
    s = _integrated(side, wall_rows, noise)
    n_rows, n_cols = s.shape
    k = np.arange(n_rows, dtype=np.float64)[:, None]
    k_max = np.argmax(s, axis=0)
    s_max = s[k_max, np.arange(n_cols)]
    distance = s - s_max[None, :] * k / np.maximum(k_max, 1)[None, :]
    distance[k > k_max[None, :]] = -np.inf
    knee = np.argmax(distance, axis=0)
    # sub-row refinement: parabola through the distance around the knee
    inner = (knee > 0) & (knee < k_max)
    cols = np.arange(n_cols)
    d0 = distance[np.maximum(knee - 1, 0), cols]
    d1 = distance[knee, cols]
    d2 = distance[np.minimum(knee + 1, n_rows - 1), cols]
    denom = d0 - 2.0 * d1 + d2
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(inner & (denom < 0), 0.5 * (d0 - d2) / denom, 0.0)
    shift = np.nan_to_num(np.clip(shift, -0.5, 0.5))
    position = knee + shift
    if edge:
        position = _edge_intersection(s, position, k_max, s_max)
    # row k integrates up to its upper edge, (k + offset + 0.5) rows from the baseline
    velocity: Float = (position + side.offset_rows + 0.5) * side.cm_s_per_row
    noise_sd = noise * np.sqrt(np.maximum(k_max, 1))
    velocity[s_max < SIGNAL_SIGMAS * noise_sd] = np.nan
    return velocity


def reversed_flow(
    side: FlowSide,
    envelope: Float,
    seconds_per_column: float,
    wall_rows: int = 3,
    edge: bool = False,
) -> Float:
    """Speed (cm/s) of reversed flow per column, traced on ``side.opposite``; NaN where none.

    ``envelope`` is the forward side's. A column holds reversed flow when the other side's
    MGM envelope (traced as :func:`mgm_envelope` with ``edge``, against the same noise)
    finds signal, its noise-subtracted power over the rows beyond the wall filter is
    :data:`REVERSAL_DOMINANCE` times the forward side's over the same rows (so a mirror
    image, weaker than its source, never counts), and the column lies in a run of at least
    :data:`MIN_REVERSAL_SECONDS` of such columns.
    """
    out = np.full(envelope.shape, np.nan)
    opposite = side.opposite
    if opposite is None or opposite.shape[0] <= wall_rows + 1 or side.offset_rows:
        return out
    other = FlowSide(opposite, -side.sign, side.cm_s_per_row, side.noise, 0.0, 0.0, None)
    other = replace(other, noise_mean=side.noise_mean)
    speed = mgm_envelope(other, wall_rows, edge)
    rows = slice(wall_rows, opposite.shape[0])
    noise = side.noise if side.noise_mean is None or not edge else side.noise_mean
    excess = np.sum(opposite[rows] - noise, axis=0)
    forward = np.sum(side.power[rows] - noise, axis=0)
    keep = np.isfinite(speed) & (excess > REVERSAL_DOMINANCE * np.maximum(forward, 0.0))
    # runs of kept columns, shorter ones dropped
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    shortest = max(1, math.ceil(MIN_REVERSAL_SECONDS / seconds_per_column))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if stop - start >= shortest:
            out[start:stop] = speed[start:stop]
    return out
