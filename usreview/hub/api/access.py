"""Which sites each reviewer reads, as the archive says, remembered for a few seconds.

Every reviewer's request needs their sites (:meth:`usreview.store.review.ReviewStore.reviewer`);
:class:`ReviewerSites` keeps each answer :attr:`~ReviewerSites.ttl` seconds (as the
service keeps the hub's answer about a token), so a restriction an administrator sets
with ``usreview hub reviewer-sites`` applies within that time, without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from usreview.store import Reviewer

__all__ = ["ReviewerSites"]


class ReviewerSites:
    """Reviewers with their sites, by name, each kept ``ttl`` seconds (thread-safe)."""

    def __init__(self, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._known: dict[str, tuple[float, Reviewer]] = {}
        self._lock = threading.Lock()

    def fresh(self, name: str) -> Reviewer | None:
        """The remembered reviewer ``name`` if still fresh, else ``None``."""
        with self._lock:
            known = self._known.get(name)
        if known is None or self._clock() - known[0] >= self.ttl:
            return None
        return known[1]

    def load(self, name: str, read: Callable[[str], Reviewer]) -> Reviewer:
        """``read(name)`` (blocking: the archive), remembered."""
        reviewer = read(name)
        with self._lock:
            self._known[name] = (self._clock(), reviewer)
        return reviewer
