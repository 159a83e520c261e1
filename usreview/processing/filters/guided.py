"""Fast speckle reduction for cines: a subsampled guided filter on the log-compressed display.

Log compression turns multiplicative speckle into additive noise of about constant variance
(5.6 dB for fully developed speckle), which is the guided filter's noise model (He, Sun and
Tang, IEEE TPAMI 35(6), 2013). Its coefficients are computed at half resolution from 2 x 2
block means, then upsampled bilinearly (the "fast guided filter", He and Sun 2015,
arXiv:1505.00996)::

    a = var / (var + eps),   b = mean (1 - a),   q = A G + B

with ``mean`` and ``var`` over a ``(2 radius + 1)^2`` window of the half-resolution image,
``A`` and ``B`` the window means of ``a`` and ``b``, and ``G`` the half-resolution image
upsampled. ``eps`` is ``strength`` times the median local variance: speckle fills most windows,
so that median is the speckle's own variance, with no separate noise estimate (automatic
estimators badly underestimate speckle). Flat speckle gets the window mean; an edge, whose
variance exceeds the speckle's, keeps the guide. About 100 frames/s on a 600 x 800 frame.

With ``keep`` (version 1.1 of the processor), the kept pixels (burned-in graphics, point
reflectors, the black around the sector) are left as they are and every mean is over the
others only: 1.0 averaged the black around a sector into its rim (18 grey levels darker on a
simulated fan) and a caliper dot into the tissue around it. Finding the kept pixels and the
masked means make a frame two to four times as long to filter as the bare filter, which is
what ``python -m benchmarks filters`` times.
Version 1.2: the filtered series has a Series Number of its own
(:func:`usreview.processing.filters.derived.derived_series_number`); 1.1 shared one with
every other derived series of its source.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from usreview.dicom import ImageKind
from usreview.processing.filters._apply import filter_instance
from usreview.processing.registry import Context, processor
from usreview.processing.results import Output

__all__ = ["guided_despeckle", "speckle_fast"]

Float = npt.NDArray[np.float32]


def _upsample2(low: Float) -> Float:
    """Bilinear x2 upsampling with pixel centres aligned (edges replicated)."""
    p = np.pad(low, 1, mode="edge")
    mid = p[:, 1:-1] * 0.75
    wide = np.empty((p.shape[0], 2 * low.shape[1]), np.float32)
    wide[:, 0::2] = mid + 0.25 * p[:, :-2]
    wide[:, 1::2] = mid + 0.25 * p[:, 2:]
    mid = wide[1:-1] * 0.75
    out = np.empty((2 * low.shape[0], wide.shape[1]), np.float32)
    out[0::2] = mid + 0.25 * wide[:-2]
    out[1::2] = mid + 0.25 * wide[2:]
    return out


def guided_despeckle(
    image: npt.NDArray[np.generic],
    *,
    radius: int = 3,
    strength: float = 2.0,
    keep: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.uint8]:
    """Reduce speckle in one 8-bit grey frame with the fast guided filter (module docstring).

    Parameters
    ----------
    image
        Grey frame ``(rows, columns)``, display values 0-255.
    radius
        Window radius at half resolution (3: a 14 x 14 pixel window at full resolution).
    strength
        ``eps`` over the median local variance; larger smooths more and keeps fewer edges.
    keep
        Pixels to keep as they are, with no weight in any window (burned-in graphics, point
        reflectors, the black around the sector): the frame's shape. Block and window means
        are then over the pixels not kept, and each window's coefficients count as much as
        the pixels not kept it holds.

    Returns
    -------
    numpy.ndarray
        The filtered frame, uint8, same shape.
    """
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"argument 'image' must be a 2D frame, got shape {image.shape}")
    if radius < 1:
        raise ValueError(f"argument 'radius' must be at least 1, got {radius}")
    if not strength > 0:
        raise ValueError(f"argument 'strength' must be positive, got {strength}")
    if keep is not None and keep.shape != image.shape:
        raise ValueError(f"argument 'keep' has shape {keep.shape}, not the image's {image.shape}")
    kept = keep if keep is not None and keep.any() else None
    if kept is not None and kept.all():
        return np.asarray(image, np.uint8).copy()
    rows, cols = image.shape
    full = np.asarray(image, np.float32)
    if rows % 2 or cols % 2:
        full = np.pad(full, ((0, rows % 2), (0, cols % 2)), mode="edge")
    size = 2 * radius + 1
    if kept is None:
        low = _halved(full)
        mean = ndimage.uniform_filter(low, size, mode="reflect")
        var = ndimage.uniform_filter(low * low, size, mode="reflect") - mean * mean
        textured = var > 1e-3
    else:
        free = (~kept).astype(np.float32)
        if rows % 2 or cols % 2:
            free = np.pad(free, ((0, rows % 2), (0, cols % 2)), mode="edge")
        share = _halved(free)  # the fraction of each block not kept
        blocks = np.maximum(share, np.float32(1e-6))
        low = (_halved(full * free) / blocks).astype(np.float32, copy=False)
        mass = np.maximum(ndimage.uniform_filter(share, size, mode="reflect"), 1e-6)
        mean = ndimage.uniform_filter(share * low, size, mode="reflect") / mass
        var = ndimage.uniform_filter(share * low * low, size, mode="reflect") / mass - mean * mean
        np.copyto(low, mean, where=share == 0)  # a block all kept reads as its window's mean
        textured = (var > 1e-3) & (share > 0.5)
    np.maximum(var, 0.0, out=var)
    eps = strength * float(np.median(var[textured])) if textured.any() else 1.0
    a = var / (var + max(eps, 1e-3))
    b = mean * (1.0 - a)
    if kept is None:
        gain = ndimage.uniform_filter(a, size, mode="reflect")
        offset = ndimage.uniform_filter(b, size, mode="reflect")
    else:  # each window counts as much as the pixels not kept it holds
        weight = np.maximum(ndimage.uniform_filter(mass, size, mode="reflect"), 1e-6)
        gain = ndimage.uniform_filter(a * mass, size, mode="reflect") / weight
        offset = ndimage.uniform_filter(b * mass, size, mode="reflect") / weight
    out = _upsample2(gain) * _upsample2(low) + _upsample2(offset)
    np.clip(out, 0.0, 255.0, out=out)
    result: npt.NDArray[np.uint8] = np.rint(out[:rows, :cols]).astype(np.uint8)
    if kept is not None:
        result[kept] = np.asarray(image)[kept]
    return result


def _halved(full: Float) -> Float:
    """Means of the 2 x 2 blocks of an even-sized frame."""
    low: Float = (full[0::2, 0::2] + full[1::2, 0::2] + full[0::2, 1::2] + full[1::2, 1::2]) * 0.25
    return low


@processor(
    "speckle_fast",
    kinds={ImageKind.BMODE, ImageKind.CINE},
    version="1.2",
    params={"radius": 3, "strength": 2.0},
)
def speckle_fast(context: Context) -> Output:
    """Fast speckle reduction of B-mode frames and cines (subsampled guided filter)."""
    radius, strength = int(context.params["radius"]), float(context.params["strength"])
    return filter_instance(
        context.instance,
        lambda frame, keep: guided_despeckle(frame, radius=radius, strength=strength, keep=keep),
        "speckle reduced (fast guided filter)",
    )
