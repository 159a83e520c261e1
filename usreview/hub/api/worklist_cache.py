"""The worklist's answer, computed at most once per moment for every reviewer polling it.

Every open worklist asks ``GET /studies`` every few seconds; with 5,000 studies one answer
costs a few hundred milliseconds of queries and JSON. :class:`WorklistCache` keeps each
answer (per filter) for :attr:`ttl` seconds and drops them all at once when the service
changes what the worklist shows (a claim, a release, a report), in whichever of its
processes: the change sets the modification time of a marker file that every process
checks (one ``stat``) before answering from its cache. Studies, analyses and job states
written meanwhile (uploads, the processing worker) appear within :attr:`ttl`.
Each answer carries a strong ETag; a client that sends it back in ``If-None-Match`` gets
``304 Not Modified`` and no body.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CachedAnswer", "WorklistCache", "etag_of"]


def etag_of(body: bytes) -> str:
    """The strong ETag of an answer's ``body`` (the worklist's, a study's)."""
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


@dataclass(frozen=True)
class CachedAnswer:
    """A serialised worklist, its ETag, how many studies it lists, and when it was made."""

    body: bytes
    etag: str
    count: int
    made: float


class WorklistCache:
    """Answers keyed by filter, shared by the service's handlers (thread-safe).

    ``marker``: a file shared by the service's processes (created when first needed);
    without it, only this process's changes drop the answers.
    """

    def __init__(
        self,
        ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        marker: Path | None = None,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._marker = marker
        self._answers: dict[tuple[str, ...], CachedAnswer] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self._marked = self._read_marker()

    def get(
        self, key: tuple[str, ...], compute: Callable[[], list[dict[str, Any]]]
    ) -> CachedAnswer:
        """The answer for ``key``: cached if fresh, else ``compute()`` serialised and kept."""
        now = self._clock()
        marked = self._read_marker()
        with self._lock:
            if marked != self._marked:  # another process changed what the worklist shows
                self._marked = marked
                self._generation += 1
                self._answers.clear()
            known = self._answers.get(key)
            generation = self._generation
        if known is not None and now - known.made < self.ttl:
            return known
        studies = compute()
        body = json.dumps({"studies": studies}).encode()
        answer = CachedAnswer(body, etag_of(body), len(studies), now)
        with self._lock:
            if generation == self._generation:  # nothing changed while computing
                # Stale answers go now: every filter asked for (any ?site=) is kept no
                # longer than ttl, so the filters callers make up cannot grow the cache.
                stale = [k for k, v in self._answers.items() if now - v.made >= self.ttl]
                for old in stale:
                    del self._answers[old]
                self._answers[key] = answer
        return answer

    def __len__(self) -> int:
        return len(self._answers)

    def invalidate(self) -> None:
        """Forget every answer (after a change this service made), in every process."""
        with self._lock:
            self._generation += 1
            self._answers.clear()
            if self._marker is not None:
                now = time.time_ns()  # set exactly: not the file system's coarse clock
                try:
                    os.utime(self._marker, ns=(now, now))
                except FileNotFoundError:
                    self._marker.touch()
                    os.utime(self._marker, ns=(now, now))
                self._marked = self._read_marker()

    def _read_marker(self) -> int:
        """The marker's modification time in nanoseconds (0: none)."""
        if self._marker is None:
            return 0
        try:
            return os.stat(self._marker).st_mtime_ns
        except FileNotFoundError:
            return 0
