"""Frame timing of multi-frame ultrasound: Frame Time, Frame Time Vector, Cine Rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FrameTiming", "frame_timing"]

_FRAME_TIME = 0x00181063
_FRAME_TIME_VECTOR = 0x00181065


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


def frame_timing(
    dataset: Any, number_of_frames: int, warnings: list[str] | None = None
) -> FrameTiming:
    """Frame timing of a dataset with ``number_of_frames`` frames.

    The attribute named by Frame Increment Pointer is preferred; then Frame Time, Frame Time
    Vector (whose first increment is 0), Cine Rate and Recommended Display Frame Rate.
    """
    pointer = dataset.get("FrameIncrementPointer")
    pointers = (
        {int(p) for p in (pointer if isinstance(pointer, list | tuple) else [pointer])}
        if pointer
        else set()
    )
    vector = dataset.get("FrameTimeVector")
    order = ["FrameTime", "FrameTimeVector"]
    if _FRAME_TIME_VECTOR in pointers and _FRAME_TIME not in pointers:
        order.reverse()
    for source in [*order, "CineRate", "RecommendedDisplayFrameRate"]:
        if source == "FrameTimeVector" and vector is not None:
            try:
                increments = np.asarray([float(v) for v in vector], dtype=np.float64)
            except (TypeError, ValueError):
                continue
            if len(increments) != number_of_frames or not np.all(np.isfinite(increments)):
                if warnings is not None:
                    warnings.append(
                        f"Frame Time Vector has {len(increments)} values for "
                        f"{number_of_frames} frames; ignored"
                    )
                continue
            offsets = np.cumsum(increments) - increments[0]
            mean = float(np.mean(increments[1:])) if number_of_frames > 1 else None
            return FrameTiming(mean, offsets, source)
        if source == "FrameTime":
            ms = _positive(dataset.get("FrameTime"))
        elif source in ("CineRate", "RecommendedDisplayFrameRate"):
            rate = _positive(dataset.get(source))
            ms = 1000.0 / rate if rate else None
        else:
            continue
        if ms is not None:
            return FrameTiming(ms, np.arange(number_of_frames, dtype=np.float64) * ms, source)
    return FrameTiming(None, None, None)
