"""Turn decoded frames into what a screen shows: 8-bit grey or 8-bit RGB."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut

__all__ = ["to_display"]


def to_display(frame: npt.NDArray[Any], header: Dataset, photometric: str) -> npt.NDArray[np.uint8]:
    """Display values of a decoded frame.

    PALETTE COLOR goes through its (possibly segmented, 16-bit) lookup table, MONOCHROME1 is
    inverted, and anything wider than 8 bits is scaled to 0-255. YBR colour has already been
    converted to RGB by decoding.
    """
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, header)
        return _to_uint8(rgb, bits=_lut_bits(header))
    if frame.dtype == np.uint8:
        image = frame
    else:
        lo, hi = float(frame.min()), float(frame.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = ((frame.astype(np.float64) - lo) * scale).round().astype(np.uint8)
    if photometric == "MONOCHROME1":
        image = 255 - image
    return np.ascontiguousarray(image)


def _lut_bits(header: Dataset) -> int:
    descriptor = header.get("RedPaletteColorLookupTableDescriptor")
    try:
        return int(descriptor[2]) if descriptor is not None else 8
    except (TypeError, ValueError, IndexError):
        return 8


def _to_uint8(values: npt.NDArray[Any], bits: int) -> npt.NDArray[np.uint8]:
    if values.dtype == np.uint8:
        return values
    if bits > 8 or int(values.max(initial=0)) > 255:
        return (values >> 8).astype(np.uint8)
    return values.astype(np.uint8)
