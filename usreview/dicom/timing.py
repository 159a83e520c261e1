"""Frame timing of multi-frame ultrasound: Frame Time, Frame Time Vector, Cine Rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.multival import MultiValue

__all__ = [
    "TIMING_KEYWORDS",
    "FrameTiming",
    "frame_increment_pointers",
    "frame_timing",
    "timing_problems",
]

_FRAME_TIME = 0x00181063
_FRAME_TIME_VECTOR = 0x00181065
#: The attributes that time the frames, in the order :func:`frame_timing` prefers them (the
#: vector first when Frame Increment Pointer names it and not Frame Time).
TIMING_KEYWORDS = ("FrameTime", "FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate")


@dataclass(frozen=True)
class FrameTiming:
    """When each frame was acquired, relative to the first.

    Attributes
    ----------
    frame_time_ms
        Nominal (mean) time between frames in milliseconds, ``None`` when the header has none.
    offsets_ms
        Acquisition time of each frame relative to the first, ``None`` when unknown.
    source
        The attribute that decided: ``FrameTimeVector``, ``FrameTime``, ``CineRate``,
        ``RecommendedDisplayFrameRate`` or ``None``.
    """

    frame_time_ms: float | None
    offsets_ms: npt.NDArray[np.float64] | None
    source: str | None

    @property
    def frame_rate(self) -> float | None:
        """Frames per second, from :attr:`frame_time_ms`."""
        return 1000.0 / self.frame_time_ms if self.frame_time_ms else None


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and np.isfinite(number) else None


def _step_ms(keyword: str, value: Any) -> float | str:
    """The frame time (ms) that Frame Time, Cine Rate or Recommended Display Frame Rate gives.

    Or why it gives none: the value and the frame time must be positive and finite.
    """
    number = _positive(value)
    ms = number if number is None or keyword == "FrameTime" else _positive(1000.0 / number)
    return f"{keyword} {value} is not a positive, finite time or rate" if ms is None else ms


def _increments(vector: Any, number_of_frames: int) -> npt.NDArray[np.float64] | str:
    """Frame Time Vector's increments (ms), or why they cannot time ``number_of_frames`` frames.

    One finite value per frame; the increments after the first (0) must be positive.
    """
    try:
        increments = np.atleast_1d(np.asarray(vector, dtype=np.float64))
    except (TypeError, ValueError):
        return "Frame Time Vector is not a list of numbers"
    if increments.shape != (number_of_frames,):
        return f"Frame Time Vector has {len(increments)} values for {number_of_frames} frames"
    if not (np.all(np.isfinite(increments)) and np.all(increments[1:] > 0)):
        return "Frame Time Vector has increments that are not positive and finite"
    return increments


def timing_problems(dataset: Any, number_of_frames: int) -> dict[str, str]:
    """The timing attributes of ``dataset`` whose values :func:`frame_timing` rejects, with why.

    Keyed by keyword (of :data:`TIMING_KEYWORDS`); attributes absent or empty are not listed.
    """
    problems = {}
    for keyword in TIMING_KEYWORDS:
        value = dataset.get(keyword)
        if value is None:
            continue
        parsed: npt.NDArray[np.float64] | float | str
        if keyword == "FrameTimeVector":
            parsed = _increments(value, number_of_frames)
        else:
            parsed = _step_ms(keyword, value)
        if isinstance(parsed, str):
            problems[keyword] = parsed
    return problems


def frame_increment_pointers(dataset: Any) -> tuple[int, ...]:
    """The tags that Frame Increment Pointer names (one or several; none when absent)."""
    pointer = dataset.get("FrameIncrementPointer")
    if not pointer:
        return ()
    return tuple(int(p) for p in (pointer if isinstance(pointer, MultiValue) else [pointer]))


def frame_timing(
    dataset: Any, number_of_frames: int, warnings: list[str] | None = None
) -> FrameTiming:
    """Frame timing of a dataset with ``number_of_frames`` frames.

    The attribute named by Frame Increment Pointer is preferred; then Frame Time, Frame Time
    Vector (whose first increment is 0), Cine Rate and Recommended Display Frame Rate. An
    invalid value (:func:`timing_problems`) is passed over, with a warning for the vector.
    """
    pointers = frame_increment_pointers(dataset)
    order = list(TIMING_KEYWORDS)
    if _FRAME_TIME_VECTOR in pointers and _FRAME_TIME not in pointers:
        order[0], order[1] = order[1], order[0]
    for source in order:
        value = dataset.get(source)
        if value is None:
            continue
        if source == "FrameTimeVector":
            increments = _increments(value, number_of_frames)
            if isinstance(increments, str):
                if warnings is not None:
                    warnings.append(f"{increments}; ignored")
                continue
            offsets = np.cumsum(increments) - increments[0]
            mean = float(np.mean(increments[1:])) if number_of_frames > 1 else None
            return FrameTiming(mean, offsets, source)
        ms = _step_ms(source, value)
        if not isinstance(ms, str):
            return FrameTiming(ms, np.arange(number_of_frames, dtype=np.float64) * ms, source)
    return FrameTiming(None, None, None)
