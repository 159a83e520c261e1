"""The status of a study as it moves through the hub, and the changes allowed.

::

    received   -> processed, failed
    processed  -> in_review, failed, received (new instances arrived)
    in_review  -> published, failed, processed (sent back by the reviewer)
    published  -> delivered, failed
    delivered  -> received (new instances arrived)
    failed     -> received (retry)
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from usreview.store.errors import InvalidTransitionError

__all__ = ["TRANSITIONS", "StudyStatus", "check_transition"]


class StudyStatus(StrEnum):
    """Where a study is in its journey through the hub."""

    RECEIVED = "received"
    PROCESSED = "processed"
    IN_REVIEW = "in_review"
    PUBLISHED = "published"
    DELIVERED = "delivered"
    FAILED = "failed"


_S = StudyStatus

#: The statuses each status may change to.
TRANSITIONS: Mapping[StudyStatus, frozenset[StudyStatus]] = MappingProxyType(
    {
        _S.RECEIVED: frozenset({_S.PROCESSED, _S.FAILED}),
        _S.PROCESSED: frozenset({_S.IN_REVIEW, _S.RECEIVED, _S.FAILED}),
        _S.IN_REVIEW: frozenset({_S.PUBLISHED, _S.PROCESSED, _S.FAILED}),
        _S.PUBLISHED: frozenset({_S.DELIVERED, _S.FAILED}),
        _S.DELIVERED: frozenset({_S.RECEIVED}),
        _S.FAILED: frozenset({_S.RECEIVED, _S.IN_REVIEW}),  # retried, or read as it is
    }
)


def check_transition(current: StudyStatus, new: StudyStatus) -> None:
    """Raise unless a study may go from ``current`` to ``new``.

    Raises
    ------
    InvalidTransitionError
        Naming both statuses and the ones allowed from ``current``.
    """
    allowed = TRANSITIONS[current]
    if new not in allowed:
        names = ", ".join(sorted(s.value for s in allowed)) or "none"
        raise InvalidTransitionError(
            f"a study cannot go from {current.value} to {new.value} (allowed: {names})"
        )
