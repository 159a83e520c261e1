"""Processor ``mmode_motion``: heart rate and wall motion from an M-mode strip.

The strip (Region Spatial Format M-mode, seconds by cm) is smoothed (1 mm in depth, 10 ms in
time) and split into dark (blood) and bright (tissue) at the midpoint of its 20th and 80th
grey percentiles. The left-ventricular cavity is the dark band that, in the median profile,
is the widest below the first 1.5 cm; per column its upper and lower edges (sub-pixel) are
the septal and posterior endocardium. The cavity dimension's systolic shortening is cut
into cycles (:func:`.cycles.detect_cycles`), giving the heart rate; per cycle the walls'
excursions between end diastole and end systole, LVIDd, LVIDs and fractional shortening.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from usreview.dicom import ImageKind, PhysicalUnits, RegionSpatialFormat, UltrasoundRegion
from usreview.processing.errors import NotApplicable
from usreview.processing.quantification.cycles import detect_cycles
from usreview.processing.registry import Context, processor
from usreview.processing.results import Code, CodingScheme, Finding, Output, Quantity

__all__ = ["mmode_motion"]

Float = npt.NDArray[np.float64]
LN, US = CodingScheme.LOINC, CodingScheme.USREVIEW
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
    "septal_excursion": (Code("septal-excursion", US, "Septal wall excursion (M-mode)"), "mm"),
    "posterior_wall_excursion": (
        Code("posterior-excursion", US, "Posterior wall excursion (M-mode)"),
        "mm",
    ),
}


def _mmode_region(regions: tuple[UltrasoundRegion, ...]) -> UltrasoundRegion:
    strips = [
        r
        for r in regions
        if r.spatial_format == RegionSpatialFormat.M_MODE
        and r.units_x == PhysicalUnits.SECONDS
        and r.units_y == PhysicalUnits.CM
        and r.delta_x != 0
        and r.delta_y != 0
    ]
    if not strips:
        raise NotApplicable("no M-mode region calibrated in seconds and cm")
    return max(strips, key=lambda r: r.width * r.height)


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
        a, b = idx[0], idx[-1]
        col = image[:, c]
        if a > 0:  # crossing between rows a - 1 (bright) and a (dark)
            top[c] = a - 1 + (col[a - 1] - threshold) / max(col[a - 1] - col[a], 1e-9)
        if b < rows - 1:
            bottom[c] = b + (col[b] - threshold) / min(col[b] - col[b + 1], -1e-9) * -1.0
    return top, bottom


def _window_median(x: Float, centre: float, half: int) -> float:
    i = round(centre)
    seg = x[max(i - half, 0) : i + half + 1]
    seg = seg[np.isfinite(seg)]
    return float(np.median(seg)) if len(seg) else float("nan")


def _quantity(name: str, values: list[float], digits: int = 3) -> Quantity:
    code, unit = _CODES[name]
    arr = np.asarray(values, dtype=np.float64)
    details = {"per_cycle": [round(float(v), digits) for v in arr]}
    return Quantity(name, code, round(float(arr.mean()), digits), unit, len(arr), details)


@processor(
    "mmode_motion",
    kinds={ImageKind.MMODE},
    version="1.0",
    params={"depth_smoothing_mm": 1.0, "min_depth_cm": 1.5},
    requires=("scipy",),
)
def mmode_motion(context: Context) -> Output:
    """Heart rate, wall excursions, LVIDd, LVIDs and fractional shortening from M-mode."""
    instance = context.instance
    region = _mmode_region(instance.regions)
    frame = instance.display_frame(0)
    if frame.ndim == 3:
        frame = np.rint(frame @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    x0, y0, x1, y1 = region.bounds
    strip = frame[y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
    dy_mm, dt = abs(region.delta_y) * 10.0, abs(region.delta_x)
    sigma_rows = float(context.params["depth_smoothing_mm"]) / dy_mm
    smooth = ndimage.gaussian_filter(strip, (sigma_rows, max(0.005 / dt, 0.5)))
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
    top, bottom = _edges(smooth, threshold, (float(band[0]), float(band[-1])))
    dimension = (bottom - top) * dy_mm
    valid = np.isfinite(dimension)
    if valid.mean() < 0.8:
        raise NotApplicable("the cavity walls are not found in most of the M-mode strip")
    filled = np.where(valid, dimension, np.nanmedian(dimension))
    reference = float(np.percentile(filled, 95))
    cycles, shortening = detect_cycles(reference - filled, dt)
    evidence = {"complete_cycles": len(cycles), "columns_with_walls": round(float(valid.mean()), 3)}
    if not cycles:
        text = "No complete cardiac cycle in the M-mode strip; no motion is reported."
        return Output(findings=(Finding("no_cycles", text, evidence),))
    septum, posterior = top * dy_mm, bottom * dy_mm
    half = max(round(0.010 / dt), 1)
    sept, post, lvidd, lvids = [], [], [], []
    for cycle in cycles:
        ed = cycle.end_s / dt  # end diastole closing the cycle: contraction onset
        i0, i1 = int(np.ceil(cycle.start_s / dt)), int(np.floor(ed))
        es = i0 + int(np.argmax(shortening[i0 : i1 + 1]))
        diastole = _window_median(dimension, ed - 2 * half, 2 * half)
        systole = _window_median(dimension, es, half)
        lvidd.append(diastole)
        lvids.append(systole)
        sept.append(
            _window_median(septum, es, half) - _window_median(septum, ed - 2 * half, 2 * half)
        )
        post.append(
            _window_median(posterior, ed - 2 * half, 2 * half) - _window_median(posterior, es, half)
        )
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
    return Output(quantities=tuple(quantities))
