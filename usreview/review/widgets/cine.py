"""CineViewer: a multi-frame loop played in the browser at its acquisition frame rate."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anywidget
import numpy as np
import numpy.typing as npt
import traitlets

from usreview.dicom import UltrasoundInstance
from usreview.review.widgets._assets import css, esm
from usreview.review.widgets._encode import Encoding, encode_frames

__all__ = ["DEFAULT_FRAME_RATE", "SPEEDS", "CineViewer"]

#: Playback speeds offered (multiples of the acquisition rate).
SPEEDS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Frame rate assumed when the header gives no timing (frames per second).
DEFAULT_FRAME_RATE = 30.0


class CineViewer(anywidget.AnyWidget):  # type: ignore[misc]
    """A cine loop sent to the browser once and played there with ``requestAnimationFrame``.

    Every frame is encoded in the kernel (JPEG by default) and sent in one binary buffer
    when the widget is displayed; play, pause, step, speed and the frame slider then work
    without the kernel. Frames are shown at their acquisition times (Frame Time or Frame
    Time Vector) divided by :attr:`speed`.

    Parameters
    ----------
    frames
        Display frames ``(n, rows, cols)`` grey or ``(n, rows, cols, 3)`` RGB, uint8.
    frame_time_ms
        Time between frames (ms), or one acquisition time per frame relative to the first;
        ``None`` assumes :data:`DEFAULT_FRAME_RATE`.
    encoding
        ``"jpeg"`` (default, small), ``"png"`` (lossless, slower to encode) or ``"raw"``.
    quality
        JPEG quality, 1-100.
    speed
        Initial playback speed, 0.25-4.
    autoplay
        Start playing when shown.

    Traitlets (synced)
    ------------------
    frame : int
        The frame shown; set it to seek. The browser reports it when paused or stepped
        (not during playback, to keep the kernel quiet).
    playing : bool
        Whether the loop plays; set it to play or pause.
    speed : float
        Playback speed (0.25-4).
    loop : bool
        Restart at the end (default) or stop.

    DOM hooks (for tests and benchmarks): the root ``.usr-cine`` carries ``data-ready``
    (frames decoded), ``data-frame``, ``data-playing``, ``data-fps`` (distinct frames drawn
    per second, updated once a second), ``data-frames`` and ``data-decode-ms``; controls are
    ``.usr-play``, ``.usr-prev``, ``.usr-next``, ``.usr-speed``, ``.usr-slider`` and
    ``.usr-frame-label``.
    """

    _esm = esm("cine")
    _css = css()

    # Set once by the constructor (the browser decodes them once).
    _frames = traitlets.Bytes(b"").tag(sync=True)
    _offsets = traitlets.List(traitlets.Int()).tag(sync=True)
    encoding = traitlets.Unicode("jpeg").tag(sync=True)
    width = traitlets.Int(0).tag(sync=True)
    height = traitlets.Int(0).tag(sync=True)
    channels = traitlets.Int(1).tag(sync=True)
    number_of_frames = traitlets.Int(0).tag(sync=True)
    frame_times_ms = traitlets.List(traitlets.Float()).tag(sync=True)
    frame_time_ms = traitlets.Float(0.0).tag(sync=True)
    timing_source = traitlets.Unicode("").tag(sync=True)

    frame = traitlets.Int(0).tag(sync=True)
    playing = traitlets.Bool(False).tag(sync=True)
    speed = traitlets.Float(1.0).tag(sync=True)
    loop = traitlets.Bool(True).tag(sync=True)

    def __init__(
        self,
        frames: Sequence[npt.NDArray[np.uint8]] | npt.NDArray[np.uint8],
        *,
        frame_time_ms: float | Sequence[float] | npt.NDArray[np.float64] | None = None,
        encoding: Encoding = "jpeg",
        quality: int = 90,
        speed: float = 1.0,
        autoplay: bool = False,
        timing_source: str | None = None,
        **kwargs: Any,
    ) -> None:
        started = time.perf_counter()
        encoded = encode_frames(frames, encoding, quality)
        #: Seconds the kernel spent encoding the frames.
        self.encode_seconds = time.perf_counter() - started
        n = len(encoded.offsets) - 1
        times, step, source = _frame_times(n, frame_time_ms)
        # Everything goes into the constructor: the browser gets it in one comm_open.
        super().__init__(
            _frames=encoded.data,
            _offsets=encoded.offsets,
            encoding=encoded.encoding,
            width=encoded.width,
            height=encoded.height,
            channels=encoded.channels,
            number_of_frames=n,
            frame_times_ms=times,
            frame_time_ms=step,
            timing_source=timing_source or source,
            speed=speed,
            playing=autoplay,
            **kwargs,
        )

    @classmethod
    def from_instance(cls, instance: UltrasoundInstance, **kwargs: Any) -> CineViewer:
        """A viewer of every frame of ``instance`` at its acquisition timing."""
        frames = np.stack([instance.display_frame(k) for k in range(instance.number_of_frames)])
        timing = instance.timing
        if timing.offsets_ms is not None:
            frame_time: Any = timing.offsets_ms
        else:
            frame_time = timing.frame_time_ms
        return cls(frames, frame_time_ms=frame_time, timing_source=timing.source, **kwargs)

    @property
    def payload_bytes(self) -> int:
        """Size of the encoded frames sent to the browser."""
        return len(self._frames)

    @property
    def frame_rate(self) -> float:
        """Nominal acquisition frame rate (frames per second)."""
        return 1000.0 / self.frame_time_ms

    @traitlets.validate("speed")
    def _check_speed(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        if not SPEEDS[0] <= value <= SPEEDS[-1]:
            raise traitlets.TraitError(
                f"CineViewer.speed: {value} is outside {SPEEDS[0]}-{SPEEDS[-1]}"
            )
        return value

    @traitlets.validate("frame")
    def _check_frame(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        n = self.number_of_frames
        if n and not 0 <= value < n:
            raise traitlets.TraitError(f"CineViewer.frame: {value} is outside 0-{n - 1}")
        return value

    def play(self) -> None:
        """Start playback."""
        self.playing = True

    def pause(self) -> None:
        """Stop playback on the current frame."""
        self.playing = False

    def seek(self, frame: int) -> None:
        """Pause and show ``frame``."""
        self.playing = False
        self.frame = frame

    def step(self, delta: int = 1) -> None:
        """Pause and move ``delta`` frames (wrapping around the loop)."""
        self.seek((self.frame + delta) % self.number_of_frames)


def _frame_times(
    n: int, frame_time_ms: float | Sequence[float] | npt.NDArray[np.float64] | None
) -> tuple[list[float], float, str]:
    """(acquisition time of each frame in ms, nominal frame time, where it came from)."""
    if frame_time_ms is None:
        step = 1000.0 / DEFAULT_FRAME_RATE
        return [k * step for k in range(n)], step, f"assumed {DEFAULT_FRAME_RATE:g} frames/s"
    values = np.atleast_1d(np.asarray(frame_time_ms, dtype=np.float64))
    if values.size == 1:
        step = float(values[0])
        if not (np.isfinite(step) and step > 0):
            raise ValueError(f"argument 'frame_time_ms': {step} is not a positive time")
        return [k * step for k in range(n)], step, "frame_time_ms"
    if values.size != n:
        raise ValueError(f"argument 'frame_time_ms': {values.size} times for {n} frames")
    times = values - values[0]
    increments = np.diff(times)
    if not (np.all(np.isfinite(times)) and np.all(increments > 0)):
        raise ValueError("argument 'frame_time_ms': frame times must increase")
    return [float(t) for t in times], float(np.mean(increments)), "frame times"
