"""Blanking what ultrasound burns into the pixels outside its regions.

Scanners write the patient's name, ID, dates and the institution into the image, around
the ultrasound regions (the Sequence of Ultrasound Regions says where the imaging data
is). Everything outside every region is set to 0. This is a first step, not a
guarantee: text drawn inside a region stays, and is left to the reviewer who marks
the case (see the README).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from usreview.dicom import UltrasoundRegion
from usreview.teaching.errors import DeidentificationError

__all__ = ["blank_outside_regions", "region_mask"]


def region_mask(
    rows: int, columns: int, regions: Sequence[UltrasoundRegion]
) -> npt.NDArray[np.bool_]:
    """``(rows, columns)``: true inside at least one region (corners inclusive, clipped).

    Raises
    ------
    DeidentificationError
        No region, or no region inside the image: nothing is known to be safe to keep.
    """
    mask = np.zeros((rows, columns), dtype=bool)
    for region in regions:
        x0, y0 = max(region.min_x0, 0), max(region.min_y0, 0)
        x1, y1 = min(region.max_x1, columns - 1), min(region.max_y1, rows - 1)
        if x0 <= x1 and y0 <= y1:
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
    if not mask.any():
        raise DeidentificationError(
            "no Sequence of Ultrasound Regions inside the image: its pixels cannot be cleaned"
        )
    return mask


def blank_outside_regions(
    frames: npt.NDArray[np.generic], regions: Sequence[UltrasoundRegion]
) -> npt.NDArray[np.generic]:
    """A copy of ``frames`` (``(n, rows, columns[, samples])``) with 0 outside ``regions``."""
    rows, columns = frames.shape[1], frames.shape[2]
    outside = ~region_mask(rows, columns, regions)
    cleaned = np.array(frames, copy=True)
    cleaned[:, outside] = 0
    return cleaned
