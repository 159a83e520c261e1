"""CineViewer: a multi-frame loop played in the browser at its acquisition frame rate."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import anywidget
import numpy as np
import numpy.typing as npt
import traitlets

from usreview.dicom import UltrasoundInstance
from usreview.review.widgets._assets import css, esm
from usreview.review.widgets._encode import Encoding, encode_frames, png_size

__all__ = ["CHUNK_FRAMES", "DEFAULT_FRAME_RATE", "SPEEDS", "CineViewer"]

#: Playback speeds offered (multiples of the acquisition rate).
SPEEDS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Frame rate assumed when the header gives no timing (frames per second).
DEFAULT_FRAME_RATE = 30.0
#: Frames encoded and sent together when a loop is streamed.
CHUNK_FRAMES = 10


class CineViewer(anywidget.AnyWidget):  # type: ignore[misc]
    """A cine loop sent to the browser once and played there with ``requestAnimationFrame``.

    Every frame is encoded in the kernel (JPEG by default) and sent in one binary buffer
    when the widget is displayed; play, pause, step, speed and the frame slider then work
    without the kernel. Frames are shown at their acquisition times (Frame Time or Frame
    Time Vector) divided by :attr:`speed`.

    Or streamed (:meth:`streaming`): a first frame (PNG, e.g. rendered by the service) is
    drawn at once, then :meth:`start` gives the timing and :meth:`append_frames` sends
    the frames in chunks; playback runs over the frames arrived so far and waits on the
    last one until the next chunk comes. A view rendered late asks for the chunks it
    missed.

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

    DOM hooks (for tests and benchmarks): the root ``.usr-cine`` carries ``data-shown``
    (a first frame drawn) with ``data-first-ms``, ``data-loaded`` (frames decoded so far),
    ``data-ready`` (every frame decoded), ``data-frame``, ``data-playing``, ``data-fps``
    (distinct frames drawn per second, updated once a second), ``data-frames`` and
    ``data-decode-ms``; controls are
    ``.usr-play``, ``.usr-prev``, ``.usr-next``, ``.usr-speed``, ``.usr-slider`` and
    ``.usr-frame-label``.
    """

    _esm = esm("cine")
    _css = css()

    # Set once by the constructor (the browser decodes them once).
    _frames = traitlets.Bytes(b"").tag(sync=True)
    _offsets = traitlets.List(traitlets.Int()).tag(sync=True)
    _first = traitlets.Bytes(b"").tag(sync=True)
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

    @classmethod
    def streaming(cls, first_frame_png: bytes, **kwargs: Any) -> CineViewer:
        """A viewer that shows ``first_frame_png`` now and receives the loop later.

        Raises
        ------
        ValueError
            ``first_frame_png`` is not a grey or RGB 8-bit PNG.
        """
        width, height, channels = png_size(first_frame_png)
        viewer = cls.__new__(cls)
        viewer._stream_init()
        viewer.encode_seconds = 0.0
        anywidget.AnyWidget.__init__(
            viewer, _first=first_frame_png, width=width, height=height, channels=channels,
            **kwargs,
        )  # fmt: skip
        viewer.on_msg(viewer._on_message)
        return viewer

    def _stream_init(self) -> None:
        self._chunks: list[tuple[dict[str, Any], bytes]] = []
        self._chunk_lock = threading.Lock()
        self._sent = 0

    def start(
        self,
        number_of_frames: int,
        frame_time_ms: float | Sequence[float] | npt.NDArray[np.float64] | None = None,
        timing_source: str | None = None,
    ) -> None:
        """Announce the streamed loop: its length and acquisition timing."""
        if number_of_frames < 1:
            raise ValueError(f"argument 'number_of_frames': {number_of_frames} is not positive")
        times, step, source = _frame_times(number_of_frames, frame_time_ms)
        with self.hold_sync():
            self.frame_times_ms = times
            self.frame_time_ms = step
            self.timing_source = timing_source or source
            self.number_of_frames = number_of_frames

    def append_frames(
        self,
        frames: Sequence[npt.NDArray[np.uint8]] | npt.NDArray[np.uint8],
        *,
        encoding: Encoding = "jpeg",
        quality: int = 90,
    ) -> None:
        """Encode the next frames of a streamed loop and send them to every view.

        Raises
        ------
        ValueError
            Not started, more frames than announced, or frames not of the first's size.
        """
        if not self.number_of_frames:
            raise ValueError("CineViewer.append_frames: call start() first")
        started = time.perf_counter()
        encoded = encode_frames(frames, encoding, quality)
        self.encode_seconds += time.perf_counter() - started
        shape = (encoded.width, encoded.height, encoded.channels)
        if shape != (self.width, self.height, self.channels):
            raise ValueError(
                f"argument 'frames': {shape} (width, height, channels) is not the "
                f"first frame's {(self.width, self.height, self.channels)}"
            )
        count = len(encoded.offsets) - 1
        with self._chunk_lock:
            if self._sent + count > self.number_of_frames:
                raise ValueError(
                    f"argument 'frames': {self._sent + count} frames sent, "
                    f"{self.number_of_frames} announced"
                )
            head = {"kind": "frames", "start": self._sent, "offsets": encoded.offsets,
                    "encoding": encoded.encoding}  # fmt: skip
            self._chunks.append((head, encoded.data))
            self._sent += count
            self.send(head, [encoded.data])

    def stream_instance(self, instance: UltrasoundInstance, chunk: int = CHUNK_FRAMES) -> None:
        """:meth:`start` with the instance's timing, then send its frames ``chunk`` at a time."""
        timing = instance.timing
        frame_time: Any = (
            timing.offsets_ms if timing.offsets_ms is not None else timing.frame_time_ms
        )
        n = instance.number_of_frames
        self.start(n, frame_time, timing.source)
        for begin in range(0, n, chunk):
            stop = min(n, begin + chunk)
            self.append_frames(np.stack([instance.display_frame(k) for k in range(begin, stop)]))

    @property
    def frames_sent(self) -> int:
        """Frames of a streamed loop sent so far."""
        return getattr(self, "_sent", 0)

    def _on_message(self, _: object, content: dict[str, Any], buffers: object) -> None:
        if isinstance(content, dict) and content.get("kind") == "want":
            with self._chunk_lock:  # a new view: everything sent before it existed
                for head, data in self._chunks:
                    self.send(head, [data])

    @property
    def payload_bytes(self) -> int:
        """Size of the encoded frames sent to the browser."""
        return len(self._frames) + sum(len(data) for _, data in getattr(self, "_chunks", []))

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
