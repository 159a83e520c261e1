"""Sweeping displays: a strip written left to right that wraps and overwrites its oldest columns.

A scanner's sweeping time display (Region Flags bits 3-4 = 2, "sweeping") writes each new
column at the write point and erases a few columns ahead of it (the erase bar); at the
right edge it wraps to the left. A frozen sweep thus shows, left of the write point, the
newest time, and right of the erase bar the oldest: time jumps back at the write point.

:func:`layout` maps a continuous recording of ``n`` columns onto such a display, so that
the simulators draw the recording as usual and then :func:`apply` it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from usreview.dicom.enum import ScrollingType

__all__ = ["SWEEPING_FLAGS", "SweepLayout", "apply", "layout"]

#: Region Flags of a sweeping region: the scrolling type sits in bits 3-4.
SWEEPING_FLAGS = int(ScrollingType.SWEEPING) << 3


@dataclass(frozen=True)
class SweepLayout:
    """Where each recorded column shows on a sweeping display of ``len(source)`` columns."""

    write_point: int
    """Display column the next sample would be written to: the first column of the erase bar."""
    erase: int
    """Number of blank columns of the erase bar."""
    source: npt.NDArray[np.intp]
    """Recorded column shown in each display column; -1 where the erase bar blanks it."""

    @property
    def parts(self) -> list[tuple[int, int]]:
        """Display columns ``[start, stop)`` of continuous time: left of the write point, right
        of the erase bar (non-empty ones only)."""
        n = len(self.source)
        spans = [(0, self.write_point), (self.write_point + self.erase, n)]
        return [(a, b) for a, b in spans if b > a]


def layout(columns: int, write_point: float, erase: int) -> SweepLayout:
    """The display of a recording of ``columns`` columns, frozen with the write point at the
    share ``write_point`` (0 to 1) of the width and ``erase`` blank columns after it."""
    k = min(max(round(write_point * columns), 0), columns)
    erase = min(max(erase, 0), columns - k)
    j = np.arange(columns)
    source = np.where(j < k, columns - k + j, j - k)
    source[k : k + erase] = -1
    return SweepLayout(k, erase, source.astype(np.intp))


def apply(pixels: npt.NDArray[np.uint8], sweep: SweepLayout) -> npt.NDArray[np.uint8]:
    """The recorded strip ``pixels`` (rows by columns) as the sweeping display shows it."""
    out = pixels[:, np.maximum(sweep.source, 0)].copy()
    out[:, sweep.source < 0] = 0
    return out
