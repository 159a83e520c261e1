"""Calibrated axes and overlays of time-based displays, in image pixels (no widget code)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from usreview.dicom import UltrasoundRegion

__all__ = ["nice_step", "ticks", "trace_pixels"]

_STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)


def nice_step(span: float, target: int = 6) -> float:
    """A round tick spacing (1, 2, 2.5 or 5 times a power of ten) giving about ``target`` ticks."""
    if not (math.isfinite(span) and span > 0):
        raise ValueError(f"argument 'span': {span} is not a positive length")
    raw = span / max(target, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(s * magnitude for s in _STEPS if s * magnitude >= raw * (1 - 1e-9))


def _decimals(step: float) -> int:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    scaled = step * 10**decimals
    return decimals + (0 if abs(scaled - round(scaled)) < 1e-6 else 1)


def ticks(
    region: UltrasoundRegion,
    axis: Literal["x", "y"],
    *,
    scale: float = 1.0,
    target: int = 6,
) -> list[tuple[float, str]]:
    """Ticks ``(image pixel coordinate, label)`` along one axis of ``region``.

    Labels are physical values times ``scale`` (10 to show a depth in cm as mm), at round
    values, computed from the region's own calibration (reference pixel and value included).
    """
    if axis == "x":
        lo_px, hi_px, delta = region.min_x0, region.max_x1, region.delta_x
    else:
        lo_px, hi_px, delta = region.min_y0, region.max_y1, region.delta_y
    if delta == 0:
        return []
    ends = region.to_physical([lo_px, hi_px], [region.min_y0, region.max_y1])
    if axis == "y":
        ends = region.to_physical([region.min_x0, region.max_x1], [lo_px, hi_px])
    values = ends[0] if axis == "x" else ends[1]
    lo, hi = sorted(float(v) * scale for v in values)
    step = nice_step(hi - lo, target)
    decimals = _decimals(step)
    first = math.ceil(lo / step - 1e-9)
    out: list[tuple[float, str]] = []
    k = first
    while k * step <= hi + 1e-9 * step:
        value = k * step
        physical = value / scale
        if axis == "x":
            pixel = float(region.to_pixel(physical, region.reference_value_y)[0])
        else:
            pixel = float(region.to_pixel(region.reference_value_x, physical)[1])
        label = f"{value:.{decimals}f}"
        out.append((round(pixel, 3), "0" if float(label) == 0 else label))
        k += 1
    return out


def trace_pixels(
    region: UltrasoundRegion, trace: npt.ArrayLike, *, scale: float = 1.0
) -> list[list[float] | None]:
    """Image pixels of a trace given as rows ``(x value, y value * scale)``; gaps are ``None``.

    ``trace`` is shaped ``(n, 2)`` in the region's physical units (the y values multiplied
    by ``scale``); non-finite values break the line.
    """
    array = np.asarray(trace, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"argument 'trace': expected (n, 2) values, got shape {array.shape}")
    x, y = region.to_pixel(array[:, 0], array[:, 1] / scale)
    out: list[list[float] | None] = []
    for px, py in zip(x.tolist(), y.tolist(), strict=True):
        if math.isfinite(px) and math.isfinite(py):
            out.append([round(px, 2), round(py, 2)])
        elif out and out[-1] is not None:
            out.append(None)
    return out
