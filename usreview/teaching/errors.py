"""The teaching stage's error (under :class:`usreview.errors.InputError`)."""

from __future__ import annotations

from usreview.errors import InputError

__all__ = ["DeidentificationError"]


class DeidentificationError(InputError):
    """An instance that cannot be de-identified safely (say, pixels with no known regions)."""
