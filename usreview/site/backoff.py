"""Exponential backoff with jitter, for retrying the hub and the PACS."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays that double after each failure, up to a cap, with random jitter.

    Parameters
    ----------
    initial
        The first delay, in seconds.
    maximum
        The cap, in seconds.
    factor
        Growth per failure.
    jitter
        Each delay is multiplied by a random factor in ``[1 - jitter, 1]``, so that many
        sites do not retry in step.
    rng
        Source of uniform numbers in ``[0, 1)`` (tests pass a fixed one).
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 60.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial <= maximum (got {initial}, {maximum})")
        if factor < 1 or not 0 <= jitter < 1:
            raise ValueError("need factor >= 1 and 0 <= jitter < 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next try."""
        base = min(self.maximum, self.initial * self.factor ** min(self.failures, 64))
        self.failures += 1
        return base * (1.0 - self.jitter * self._rng())

    def reset(self) -> None:
        """A success: the next failure starts again from ``initial``."""
        self.failures = 0
