"""Processor ``mmode_motion``: heart rate and wall motion from an M-mode strip.

The strip (Region Spatial Format M-mode, seconds by cm) is smoothed (Gaussian, 1 mm in
depth, 5 ms in time) and split into dark (blood) and bright (tissue) at the midpoint of its
20th and 80th grey percentiles. The left-ventricular cavity is the dark band that, in the
median profile, is the widest below the first 1.5 cm; per column that band's dark run gives a
first guess of the septal and posterior endocardium.

Each wall edge is then placed where the blood-tissue interface lies, per column, on the
display grey (log-compressed echo, where speckle is a small additive texture on a large
step) smoothed only 0.5 mm in depth: at the midpoint between the cavity's level (median of
its middle half) and the wall's own level (median of 3 mm of wall beyond the first guess),
walking outward from inside the cavity. The global midpoint of the first guess lies 10 to
20 dB under the walls' echo, where the partial-volume pixels of the interface and the
1 mm smoothing across it still count as wall: edges placed there sit inside the cavity,
shortening the dimension by about a millimetre against the interface.

The excursions are coded as "Excursion Distance" (125327, DCM; CID 12304) with their finding
site in ``details["finding_site"]`` (interventricular septum; left ventricle, posterior),
which the SR carries (:mod:`usreview.processing.sr`).

The cavity dimension's systolic shortening is cut into cycles
(:func:`.cycles.detect_cycles`), giving the heart rate. Before that, columns whose walls were
misplaced (speckle at low SNR, the strip's ends) are removed by a 40 ms running median and
the trace smoothed (15 ms Gaussian), and a cycle whose length is not within 0.65 to 1.5
times the trace's dominant period (autocorrelation) is left out as cut at a spurious foot:
at 5 dB this keeps the cycle count and the heart rate right where spurious upstrokes at the
strip's ends added a short cycle. End diastole is the largest
dimension before contraction (the least shortening within the 30 % of the cycle before the
foot of the upstroke, which the tangent method places after contraction onset), end systole
the greatest shortening; per cycle: the walls' excursions between them, LVIDd, LVIDs and
fractional shortening.

Version 1.3 (:mod:`.cycles`): heart rates are searched from 12 to 320/min and a period at
the edge of that range is refused (finding ``no_cycles`` with the reason); 1.2 searched 30
to 200/min and read 200/min as 100, 250 as 125, 30 as no cycle. A sweeping strip (Region
Flags) is measured only on the longer side of its write point (finding ``sweep``) and
refused when that cannot be found; 1.2 measured across it (75/min read 82 or 43).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from usreview.dicom import ImageKind, PhysicalUnits, RegionSpatialFormat, UltrasoundRegion
from usreview.processing.errors import NotApplicable
from usreview.processing.quantification.cycles import (
    Cycle,
    continuous_columns,
    detect_cycles,
    sweep_problem,
)
from usreview.processing.registry import Context, processor
from usreview.processing.results import Code, CodingScheme, Finding, Output, Quantity

__all__ = ["mmode_motion"]

Float = npt.NDArray[np.float64]
LN, DCM, SCT = CodingScheme.LOINC, CodingScheme.DCM, CodingScheme.SNOMED
_EXCURSION = Code("125327", DCM, "Excursion Distance")  # CID 12304, with a finding site
_SITES = {  # as the SR's finding site (TID 300): anatomic location, topographical modifier
    "septal_excursion": {"location": Code("589001", SCT, "Interventricular septum").as_dict()},
    "posterior_wall_excursion": {
        "location": Code("87878005", SCT, "Left ventricle").as_dict(),
        "modifier": Code("255551008", SCT, "Posterior").as_dict(),
    },
}
_CODES = {
    "heart_rate": (Code("8867-4", LN, "Heart rate"), "/min"),
    "lv_internal_dimension_diastole": (
        Code("29436-3", LN, "Left Ventricle Internal End Diastolic Dimension"),
        "mm",
    ),
    "lv_internal_dimension_systole": (
        Code("29438-9", LN, "Left Ventricle Internal Systolic Dimension"),
        "mm",
    ),
    "fractional_shortening": (Code("18051-3", LN, "Left Ventricular Fractional Shortening"), "1"),
    "septal_excursion": (_EXCURSION, "mm"),
    "posterior_wall_excursion": (_EXCURSION, "mm"),
}
_WALL_MM = 3.0  # wall sampled beyond the first guess of its edge, for the wall's level
_GAP_MM = 0.5  # left out next to the first guess (it may lie up to a pixel or so off)
_OUTLIER_S = 0.040  # running median against misplaced walls before cutting cycles
_SMOOTH_S = 0.015  # then a Gaussian (SD, s): the wall motion is far slower than speckle
_PERIOD_RANGE = (0.65, 1.5)  # cycles kept: this share of the dominant period (autocorrelation)
_DIASTOLE = 0.30  # share of the cycle before the upstroke's foot searched for end diastole
#: A strip through the heart spans several cm of depth; under 1 cm it cannot hold two walls
#: and the cavity between them (a neonate's LV is 1.5 to 2 cm across).
_MIN_SPAN_CM = 1.0
#: ... and deeper than any ultrasound images (30 cm for the deepest abdominal probes).
_MAX_SPAN_CM = 40.0


def _mmode_region(
    regions: tuple[UltrasoundRegion, ...], rows: int, columns: int
) -> UltrasoundRegion:
    """The largest M-mode region of a ``rows`` by ``columns`` image that can be measured.

    Raises :class:`NotApplicable` naming what is wrong when there is none.
    """
    strips = [
        r
        for r in regions
        if r.spatial_format == RegionSpatialFormat.M_MODE
        and r.units_x == PhysicalUnits.SECONDS
        and r.units_y == PhysicalUnits.CM
    ]
    if not strips:
        raise NotApplicable("no M-mode region calibrated in seconds and cm")
    problems = [_strip_problem(r, rows, columns) for r in strips]
    usable = [r for r, problem in zip(strips, problems, strict=True) if problem is None]
    if not usable:
        raise NotApplicable(f"the M-mode region is not usable: {problems[0]}")
    return max(usable, key=lambda r: r.width * r.height)


def _strip_problem(region: UltrasoundRegion, rows: int, columns: int) -> str | None:
    """Why an M-mode region cannot be measured (calibration, bounds, extent), or ``None``."""
    problem = region.deltas_problem() or region.bounds_problem(rows, columns)
    if problem is not None:
        return problem
    sweep = sweep_problem(abs(region.delta_x), region.width)
    if sweep is not None:
        return f"its time axis is implausible: {sweep}"
    span = region.height * abs(region.delta_y)
    if span < _MIN_SPAN_CM:
        return f"it spans {span:.3g} cm of depth, less than the {_MIN_SPAN_CM:g} cm of a heart"
    if span > _MAX_SPAN_CM:
        return f"it spans {span:.3g} cm of depth, more than any ultrasound image ({_MAX_SPAN_CM:g})"
    return None


def _crossing(col: Float, level: float, a: int, b: int) -> float:
    """Fractional row between rows ``a`` and ``b`` where ``col`` crosses ``level``."""
    return float(a + (level - col[a]) / (col[b] - col[a]) * (b - a))


def _edges(image: Float, threshold: float, band: tuple[float, float]) -> tuple[Float, Float]:
    """Upper and lower edge (fractional rows) of the dark run nearest ``band`` in each column."""
    rows, cols = image.shape
    top, bottom = np.full(cols, np.nan), np.full(cols, np.nan)
    centre = 0.5 * (band[0] + band[1])
    for c in range(cols):
        dark = image[:, c] < threshold
        labels, n = ndimage.label(dark)
        if n == 0:
            continue
        best, best_score = 0, -np.inf
        for lab in range(1, n + 1):
            idx = np.flatnonzero(labels == lab)
            overlap = min(idx[-1], band[1]) - max(idx[0], band[0])
            score = overlap - 0.1 * abs(0.5 * (idx[0] + idx[-1]) - centre)
            if score > best_score:
                best, best_score = lab, score
        idx = np.flatnonzero(labels == best)
        a, b = int(idx[0]), int(idx[-1])
        col = image[:, c]
        if a > 0:  # between rows a - 1 (bright) and a (dark)
            top[c] = _crossing(col, threshold, a, a - 1)
        if b < rows - 1:  # between rows b (dark) and b + 1 (bright)
            bottom[c] = _crossing(col, threshold, b, b + 1)
    return top, bottom


def _walk(col: Float, level: float, start: int, step: int) -> float:
    """From row ``start``, step ``step`` while below ``level``; the fractional crossing."""
    i = start
    while 0 <= i + step < len(col) and col[i + step] < level:
        i += step
    if not 0 <= i + step < len(col) or col[i] >= level:
        return float("nan")
    return _crossing(col, level, i, i + step)


def _interfaces(
    image: Float, top: Float, bottom: Float, wall: int, gap: int
) -> tuple[Float, Float]:
    """Septal and posterior blood-tissue interfaces (fractional rows) near the first guesses.

    Per column the edge is where ``image`` crosses the midpoint of the cavity's level and
    the adjacent wall's level, walking outward from inside the cavity.
    """
    rows = image.shape[0]
    septum, posterior = np.full(len(top), np.nan), np.full(len(top), np.nan)
    for c in np.flatnonzero(np.isfinite(top) & np.isfinite(bottom)):
        a, b = int(np.ceil(top[c])), int(np.floor(bottom[c]))
        if b - a < 4 or a - gap - wall < 0 or b + gap + wall >= rows:
            continue
        col = image[:, c]
        quarter = (b - a) // 4
        blood = float(np.median(col[a + quarter : b - quarter + 1]))
        upper = float(np.median(col[a - gap - wall : a - gap]))
        lower = float(np.median(col[b + 1 + gap : b + 1 + gap + wall]))
        inside = min(gap + 1, quarter)  # start just inside the cavity
        septum[c] = _walk(col, 0.5 * (blood + upper), a + inside, -1)
        posterior[c] = _walk(col, 0.5 * (blood + lower), b - inside, +1)
    return septum, posterior


def _window_median(x: Float, centre: float, half: int) -> float:
    i = round(centre)
    seg = x[max(i - half, 0) : i + half + 1]
    seg = seg[np.isfinite(seg)]
    return float(np.median(seg)) if len(seg) else float("nan")


def _end_diastole(shortening: Float, cycle: Cycle, dt: float) -> int:
    """Column of the largest dimension (least shortening) before the cycle's closing foot."""
    end = int(np.floor(cycle.end_s / dt))
    start = max(int(np.ceil((cycle.end_s - _DIASTOLE * cycle.period_s) / dt)), 0)
    return start + int(np.argmin(shortening[start : end + 1]))


def _quantity(name: str, values: list[float], digits: int = 3) -> Quantity:
    code, unit = _CODES[name]
    arr = np.asarray(values, dtype=np.float64)
    details: dict[str, object] = {"per_cycle": [round(float(v), digits) for v in arr]}
    if name in _SITES:
        details["finding_site"] = _SITES[name]
    return Quantity(name, code, round(float(arr.mean()), digits), unit, len(arr), details)


@processor(
    "mmode_motion",
    kinds={ImageKind.MMODE},
    version="1.3",
    params={"depth_smoothing_mm": 1.0, "edge_smoothing_mm": 0.5, "min_depth_cm": 1.5},
    requires=("scipy",),
)
def mmode_motion(context: Context) -> Output:
    """Heart rate, wall excursions, LVIDd, LVIDs and fractional shortening from M-mode."""
    instance = context.instance
    region = _mmode_region(instance.regions, instance.rows, instance.columns)
    frame = instance.display_frame(0)
    if frame.ndim == 3:
        frame = np.rint(frame @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    x0, y0, x1, y1 = region.bounds
    strip = frame[y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
    dy_mm, dt = abs(region.delta_y) * 10.0, abs(region.delta_x)
    span = continuous_columns(strip, region.scrolling)
    sweep = {} if span.note is None else {"sweep": span.note, "columns": [span.start, span.stop]}
    if span.problem is not None:
        text = f"No cardiac cycle is measured in the M-mode strip: {span.problem}."
        return Output(findings=(Finding("no_cycles", text, sweep),))
    strip = strip[:, span.start : span.stop]  # where time runs on (a sweep's longer side)
    rows, cols = strip.shape  # filter sizes are capped at the strip's size
    sigma_t = min(max(0.005 / dt, 0.5), cols)
    sigma_rows = min(float(context.params["depth_smoothing_mm"]) / dy_mm, rows)
    smooth = ndimage.gaussian_filter(strip, (sigma_rows, sigma_t))
    lo, hi = np.percentile(smooth, [20, 80])
    threshold = 0.5 * (lo + hi)
    skip = int(float(context.params["min_depth_cm"]) * 10.0 / dy_mm)
    profile = np.median(smooth, axis=1)
    labels, n = ndimage.label(profile < threshold)
    runs = [np.flatnonzero(labels == k) for k in range(1, n + 1)]
    runs = [r for r in runs if r[0] >= skip and r[-1] < len(profile) - 1]
    if not runs:
        raise NotApplicable("no dark cavity between two walls in the M-mode strip")
    band = max(runs, key=len)
    guess_top, guess_bottom = _edges(smooth, threshold, (float(band[0]), float(band[-1])))
    sharp = ndimage.gaussian_filter(
        strip, (min(float(context.params["edge_smoothing_mm"]) / dy_mm, rows), sigma_t)
    )
    top, bottom = _interfaces(
        sharp,
        guess_top,
        guess_bottom,
        wall=max(round(_WALL_MM / dy_mm), 2),
        gap=round(_GAP_MM / dy_mm),
    )
    dimension = (bottom - top) * dy_mm
    valid = np.isfinite(dimension)
    if valid.mean() < 0.8:
        raise NotApplicable("the cavity walls are not found in most of the M-mode strip")
    filled = np.where(valid, dimension, np.nanmedian(dimension))
    # Columns whose walls were misplaced (speckle at low SNR, the strip's ends) are single
    # or paired outliers: a running median (reflected at the ends) removes them before the
    # cycles are cut, so that no spurious upstroke opens or closes a cycle.
    width = min(max(3, round(_OUTLIER_S / dt) | 1), cols | 1)
    robust = ndimage.gaussian_filter1d(
        ndimage.median_filter(filled, size=width, mode="reflect"),
        min(_SMOOTH_S / dt, cols),
        mode="reflect",
    )
    reference = float(np.percentile(robust, 95))
    found = detect_cycles(reference - robust, dt)
    cycles, shortening, period = found.cycles, found.smooth, found.period_s
    if period is not None:  # a foot placed on noise makes a cycle of implausible length
        low, high = _PERIOD_RANGE
        cycles = [c for c in cycles if low * period <= c.period_s <= high * period]
    evidence = {
        "complete_cycles": len(cycles),
        "columns_with_walls": round(float(valid.mean()), 3),
        **sweep,
    }
    if found.problem is not None:
        text = (
            f"No heart rate is measured in the M-mode strip: {found.problem}; "
            "no motion is reported."
        )
        return Output(findings=(Finding("no_cycles", text, evidence),))
    if not cycles:
        where = f" on the longer side of its write point ({span.note})" if sweep else ""
        text = f"No complete cardiac cycle in the M-mode strip{where}; no motion is reported."
        return Output(findings=(Finding("no_cycles", text, evidence),))
    septum, posterior = top * dy_mm, bottom * dy_mm
    half = max(round(0.010 / dt), 1)
    sept, post, lvidd, lvids = [], [], [], []
    for cycle in cycles:
        ed = _end_diastole(shortening, cycle, dt)
        i0, i1 = int(np.ceil(cycle.start_s / dt)), int(np.floor(cycle.end_s / dt))
        es = i0 + int(np.argmax(shortening[i0 : i1 + 1]))
        lvidd.append(_window_median(dimension, ed, 2 * half))
        lvids.append(_window_median(dimension, es, half))
        sept.append(_window_median(septum, es, half) - _window_median(septum, ed, 2 * half))
        post.append(_window_median(posterior, ed, 2 * half) - _window_median(posterior, es, half))
    periods = [c.period_s for c in cycles]
    heart_rate = Quantity(
        "heart_rate",
        _CODES["heart_rate"][0],
        round(60.0 / float(np.mean(periods)), 2),
        "/min",
        len(cycles),
        {"per_cycle": [round(60.0 / p, 2) for p in periods]},
    )
    quantities = [
        heart_rate,
        _quantity("septal_excursion", sept),
        _quantity("posterior_wall_excursion", post),
        _quantity("lv_internal_dimension_diastole", lvidd),
        _quantity("lv_internal_dimension_systole", lvids),
        _quantity(
            "fractional_shortening", [(d - s) / d for d, s in zip(lvidd, lvids, strict=True)], 4
        ),
    ]
    described = span.describe(dt)
    notes = () if described is None else (Finding("sweep", described, sweep),)
    return Output(quantities=tuple(quantities), findings=notes)
