"""The progress of ``usreview site push``: a bar on a terminal, plain lines otherwise.

On a terminal one line is redrawn after each instance: a bar, instances done of the
total, the rate since the start and the time left at that rate; an instance that is not
acknowledged is printed on a line of its own above the bar, so none scrolls away. When
the stream is not a terminal (a log, a pipe), each instance is one plain line::

    [12/40] study/IM0012.dcm: stored (8.4 inst/s, ETA 3 s)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

__all__ = ["PushProgress", "format_duration"]

#: Outcomes of :func:`usreview.site.push.push_paths` that mean "the hub holds it".
_GOOD = frozenset({"stored", "already at the hub"})
_BAR = 24


def format_duration(seconds: float) -> str:
    """``seconds`` as ``42 s``, ``3:07`` or ``1:02:03``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PushProgress:
    """The ``progress`` callback of :func:`~usreview.site.push.push_paths`.

    Parameters
    ----------
    stream
        Where to write (usually ``sys.stderr``).
    tty
        Draw a bar (default: whether ``stream`` is a terminal).
    clock
        Seconds, monotonic (for tests).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._clock = clock
        self._started = clock()
        self._drawn = False

    def rate(self, done: int) -> float:
        """Instances per second since the start."""
        elapsed = self._clock() - self._started
        return done / elapsed if elapsed > 0 else 0.0

    def eta(self, done: int, total: int) -> str:
        """The time left at the rate so far (``?`` before any rate)."""
        rate = self.rate(done)
        return format_duration((total - done) / rate) if rate > 0 else "?"

    def status(self, done: int, total: int) -> str:
        """``12/40 30% 8.4 inst/s ETA 3 s``."""
        percent = 100 * done // total if total else 100
        speed = f"{self.rate(done):.1f} inst/s"
        return f"{done}/{total} {percent}% {speed} ETA {self.eta(done, total)}"

    def __call__(self, done: int, total: int, path: Path, outcome: str) -> None:
        """Show that ``path`` (the ``done``-th of ``total``) ended with ``outcome``."""
        if not self.tty:
            speed = f"{self.rate(done):.1f} inst/s, ETA {self.eta(done, total)}"
            self.stream.write(f"[{done}/{total}] {path}: {outcome} ({speed})\n")
            self.stream.flush()
            return
        if outcome not in _GOOD:
            self._clear()
            self.stream.write(f"{path}: {outcome}\n")
        filled = _BAR * done // total if total else _BAR
        line = f"[{'#' * filled}{'.' * (_BAR - filled)}] {self.status(done, total)}"
        width = shutil.get_terminal_size((80, 24)).columns
        self.stream.write("\r" + line[: max(width - 1, 10)] + "\x1b[K")
        self._drawn = True
        if done >= total:
            self.stream.write("\n")
            self._drawn = False
        self.stream.flush()

    def end(self) -> None:
        """End the bar's line (a push that stopped before its last instance)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
