"""Frames of stored instances as PNG, rendered once and kept in the service's memory.

``GET /instances/{uid}/frames/{number}`` (:class:`~usreview.hub.api.handlers_review.
FrameHandler`) answers from :data:`FRAMES`: the display frame (8-bit grey or RGB, as
:meth:`usreview.dicom.UltrasoundInstance.display_frame`) is decoded once per instance
content (the plaintext's SHA-256) and frame, and each size asked for is encoded once.
Nothing is written to disk: the pixels stay in memory, bounded by :data:`MAX_BYTES`,
least recently used first out. Access is checked by the handler before the cache is
asked, so a cached frame is never an answer to somebody who may not read the instance.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from usreview.processing.png import encode_png

__all__ = ["FRAMES", "MAX_BYTES", "FrameCache", "thumbnail"]

#: Memory held by the cache (decoded frames and PNGs), at most.
MAX_BYTES: Final = 64 * 1024 * 1024

Decoder = Callable[[], npt.NDArray[np.uint8]]
_Key = tuple[str, int, int]  # (plaintext sha256, frame number, rows: 0 full, -1 pixels)
_PIXELS: Final = -1


def thumbnail(frame: npt.NDArray[np.uint8], rows: int) -> npt.NDArray[np.uint8]:
    """``frame`` decimated by the integer step that leaves at least ``rows`` rows."""
    step = max(1, frame.shape[0] // rows)
    return np.ascontiguousarray(frame[::step, ::step])


class FrameCache:
    """PNGs of display frames, each decoded and encoded once (thread-safe)."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._max = max_bytes
        self._items: OrderedDict[_Key, npt.NDArray[np.uint8] | bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._busy: dict[tuple[str, int], threading.Lock] = {}

    def png(self, content: str, number: int, rows: int | None, decode: Decoder) -> bytes:
        """The PNG of frame ``number`` of the instance whose plaintext hashes to ``content``.

        Parameters
        ----------
        content
            The plaintext's SHA-256 (identifies the pixels, whoever stored them).
        number
            Frame number, from 1 as in DICOM.
        rows
            ``None`` for the full frame, else a thumbnail of at least this many rows.
        decode
            Called at most once per ``(content, number)`` while cached: the display frame.
        """
        key = (content, number, rows or 0)
        found = self._get(key)
        if isinstance(found, bytes):
            return found
        with self._frame_lock(content, number):  # one decode per frame at a time
            found = self._get(key)
            if isinstance(found, bytes):
                return found
            pixels = self._get((content, number, _PIXELS))
            if not isinstance(pixels, np.ndarray):
                try:
                    pixels = decode()
                except BaseException:  # a frame that is not there keeps no lock
                    with self._lock:
                        self._busy.pop((content, number), None)
                    raise
                self._put((content, number, _PIXELS), pixels, pixels.nbytes)
            data = encode_png(thumbnail(pixels, rows) if rows else pixels)
            self._put(key, data, len(data))
            return data

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._size

    def _frame_lock(self, content: str, number: int) -> threading.Lock:
        with self._lock:
            return self._busy.setdefault((content, number), threading.Lock())

    def _get(self, key: _Key) -> npt.NDArray[np.uint8] | bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def _put(self, key: _Key, value: npt.NDArray[np.uint8] | bytes, size: int) -> None:
        with self._lock:
            if size > self._max or key in self._items:
                return
            self._items[key] = value
            self._size += size
            while self._size > self._max:
                old_key, old = self._items.popitem(last=False)
                self._size -= old.nbytes if isinstance(old, np.ndarray) else len(old)
                if old_key[2] == _PIXELS:
                    self._busy.pop((old_key[0], old_key[1]), None)


#: The service's cache (keyed by content: shared by every context of the process).
FRAMES: Final = FrameCache()
