"""Turn decoded frames into what a screen shows: 8-bit grey or 8-bit RGB.

Stored values wider than 8 bits go through one mapping for the whole instance, read from the
header alone, so that the same tissue has the same grey in every frame of a cine whatever
else a frame holds:

1. grey only: the Modality LUT Sequence, else Rescale Slope and Intercept, when present;
2. grey only: the VOI window (the first Window Center and Width) with its VOI LUT Function
   (``LINEAR`` by default; ``LINEAR_EXACT``, ``SIGMOID``), as PS3.3 C.11.2.1.2 and
   C.11.2.1.3 define them, to 0-255;
3. without a usable window (and for colour): the whole range of Bits Stored (signed when
   Pixel Representation is 1), through the modality transform, scaled to 0-255.

8-bit frames are shown as stored, PALETTE COLOR goes through its (possibly segmented,
16-bit) lookup table, and MONOCHROME1 is inverted last. YBR colour has already been
converted to RGB by decoding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

__all__ = ["to_display"]

_GREY = ("MONOCHROME1", "MONOCHROME2")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def to_display(frame: npt.NDArray[Any], header: Dataset, photometric: str) -> npt.NDArray[np.uint8]:
    """Display values of a decoded frame (or of several frames at once: the mapping is the
    same for every frame of an instance).

    See the module's description for the mapping of values wider than 8 bits.
    """
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, header)
        return _to_uint8(rgb, bits=_lut_bits(header))
    grey = photometric in _GREY
    image = frame if frame.dtype == np.uint8 else _scaled(frame, header, grey=grey)
    if photometric == "MONOCHROME1":
        image = 255 - image
    return np.ascontiguousarray(image)


def _scaled(frame: npt.NDArray[Any], header: Dataset, *, grey: bool) -> npt.NDArray[np.uint8]:
    """0-255 from stored values: modality transform, then the VOI window or the stored range."""
    lo, hi = _stored_range(frame, header)
    values = frame.astype(np.float64)
    if grey:
        values, lo, hi = _modality(frame, values, header, lo, hi)
        window = _window(header)
        if window is not None:
            return _windowed(values, *window)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.clip((values - lo) * scale, 0.0, 255.0)
    return np.rint(out).astype(np.uint8)


def _stored_range(frame: npt.NDArray[Any], header: Dataset) -> tuple[float, float]:
    """The smallest and largest value Bits Stored and Pixel Representation allow."""
    container = frame.dtype.itemsize * 8
    bits = _int(header.get("BitsStored")) or _int(header.get("BitsAllocated")) or container
    if not 1 <= bits <= container:
        bits = container
    representation = _int(header.get("PixelRepresentation"))
    signed = representation == 1 if representation is not None else frame.dtype.kind == "i"
    if signed:
        return (-float(2 ** (bits - 1)), float(2 ** (bits - 1) - 1))
    return (0.0, float(2**bits - 1))


def _modality(
    frame: npt.NDArray[Any],
    values: npt.NDArray[np.float64],
    header: Dataset,
    lo: float,
    hi: float,
) -> tuple[npt.NDArray[np.float64], float, float]:
    """Modality LUT or rescale applied to the values and to the ends of their range."""
    if "ModalityLUTSequence" in header and frame.dtype.kind in "iu":
        try:
            lut = header.ModalityLUTSequence[0]
            first, entries = int(lut.LUTDescriptor[1]), int(lut.LUTDescriptor[0]) or 65536
            mapped = np.asarray(apply_modality_lut(frame, header), dtype=np.float64)
            table = apply_modality_lut(np.arange(first, first + entries), header)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            pass  # an unreadable table: tolerated, the stored values are shown
        else:
            return mapped, float(np.min(table)), float(np.max(table))
    slope = _float(header.get("RescaleSlope"))
    intercept = _float(header.get("RescaleIntercept"))
    if slope is None or slope == 0:
        slope = 1.0
    if intercept is None:
        intercept = 0.0
    if (slope, intercept) == (1.0, 0.0):
        return values, lo, hi
    ends = sorted((lo * slope + intercept, hi * slope + intercept))
    return values * slope + intercept, ends[0], ends[1]


def _window(header: Dataset) -> tuple[float, float, str] | None:
    """(center, width, VOI LUT Function) of the header's first window, or ``None`` when it
    has none or it is unusable (a width below 1, or not above 0 for the exact functions)."""
    center = _float(_first(header.get("WindowCenter")))
    width = _float(_first(header.get("WindowWidth")))
    if center is None or width is None:
        return None
    function = str(header.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        function = "LINEAR"
    if width >= 1 or (function != "LINEAR" and width > 0):
        return (center, width, function)
    return None


def _windowed(
    values: npt.NDArray[np.float64], center: float, width: float, function: str
) -> npt.NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2 (LINEAR) and C.11.2.1.3 (LINEAR_EXACT, SIGMOID), output 0-255."""
    if function == "SIGMOID":
        with np.errstate(over="ignore"):
            unit = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        unit = np.clip((values - center) / width + 0.5, 0.0, 1.0)
    elif width == 1:  # LINEAR of width 1: a threshold at center - 0.5
        unit = (values > center - 0.5).astype(np.float64)
    else:
        unit = np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    return np.rint(unit * 255.0).astype(np.uint8)


def _first(value: Any) -> Any:
    """The first of a multi-valued element's values (the value itself when single)."""
    if value is None or isinstance(value, str | bytes):
        return value
    try:
        return value[0] if len(value) else None
    except TypeError:
        return value


def _float(value: Any) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


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
