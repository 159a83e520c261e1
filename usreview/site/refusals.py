"""What the hub's refusal of an upload means for the spooled instance: one place.

:func:`classify_refusal` decides from the hub's JSON error fields (``error`` and, for
``422 rejected_instance``, ``reason``; see ``usreview/hub/api/errors.py`` and
:class:`usreview.ingest.errors.RejectReason`): only an instance that can never be
accepted is final and goes to ``rejected/``; the others stay in the spool.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from usreview.ingest.errors import RejectReason

__all__ = ["FINAL_REASONS", "Refusal", "classify_refusal"]


class Refusal(StrEnum):
    """What a hub's refusal of an upload means for the spooled instance."""

    FINAL = "final"
    """The instance itself is bad and sending it again can never work: to ``rejected/``."""
    INSTANCE = "instance"
    """This instance, for now (a hub limit, a decoder missing, hub-side trouble): it stays
    in the spool and is sent again after its own backoff; the others go on."""
    SITE = "site"
    """The site or the hub as a whole (clock, keys, token, address, rate limit): every
    upload waits with the uploader's backoff, then tries again."""


#: ``reason`` of a ``422 rejected_instance`` that makes a refusal final: what the hub
#: found in the instance's own bytes. The others (unsupported transfer syntax, image too
#: large, resource limit exceeded, timed out, worker crashed) are the hub's limits or
#: trouble, and are retried.
FINAL_REASONS: Final = frozenset(
    {
        RejectReason.NOT_DICOM.value,
        RejectReason.NOT_ULTRASOUND.value,
        RejectReason.CORRUPT_PIXEL_DATA.value,
        RejectReason.INVALID_HEADER.value,
    }
)
#: Error codes (and statuses) about the site or the hub, not about one instance.
_SITE_CODES: Final = frozenset(
    {"bad_envelope", "not_for_hub", "wrong_sender", "forbidden", "unauthorized"}
)
_SITE_STATUSES: Final = frozenset({401, 403, 404, 405, 408, 411, 415, 429})


def classify_refusal(status: int, code: str, reason: str | None = None) -> Refusal:
    """What a 4xx answer to an upload means, from the hub's JSON ``error`` and ``reason``.

    Final only when the instance itself can never be accepted: ``409 conflict`` (other
    bytes under a UID the hub holds; the hub keeps them aside for its administrator),
    ``400 uid_mismatch`` (the dataset's SOP Instance UID is not the one its scanner sent
    it under) and ``422 rejected_instance`` with a reason in :data:`FINAL_REASONS`. The
    site's own conditions (an envelope refused: a clock ahead, a stale hub key, a key not
    registered; the token; the address) make every upload wait; anything else (``413
    too_large``, ``409 replayed``, a hub-side 422, a code not known here) is retried for
    that instance alone.
    """
    if (status, code) in ((409, "conflict"), (400, "uid_mismatch")):
        return Refusal.FINAL
    if status == 422 and code == "rejected_instance" and reason in FINAL_REASONS:
        return Refusal.FINAL
    if code in _SITE_CODES or status in _SITE_STATUSES:
        return Refusal.SITE
    return Refusal.INSTANCE
