"""Errors of the ingest stage, all under :class:`IngestError`.

::

    IngestError                         the hub could not accept an upload
    ├── RefusedEnvelopeError            the envelope does not open for this site (also an
    │   │                               InputError; the envelope error is the ``__cause__``)
    │   ├── UnknownSiteError            no key is registered for the site
    │   ├── WrongSenderError            signed by a key that is not the site's
    │   ├── NotForHubError              not addressed to the hub's key
    │   └── ReplayedEnvelopeError       opened before and no longer stored here
    ├── RejectedInstanceError           the plaintext is not an acceptable ultrasound instance
    │                                   (also an InputError; ``reason`` says why)
    ├── UidMismatchError                the instance is not the one the upload named (also
    │                                   an InputError)
    ├── InvalidReceiptError             a receipt whose signature or content does not verify
    └── WorkerPoolError                 the parsing pool cannot serve (closed, cannot start)

Client faults (``InputError``) map to 4xx at the HTTP boundary; :class:`WorkerPoolError`
is the server's fault (5xx, send again later).
"""

from __future__ import annotations

from enum import StrEnum

from usreview.errors import InputError, UsreviewError

__all__ = [
    "IngestError",
    "InvalidReceiptError",
    "NotForHubError",
    "RefusedEnvelopeError",
    "RejectReason",
    "RejectedInstanceError",
    "ReplayedEnvelopeError",
    "UidMismatchError",
    "UnknownSiteError",
    "WorkerPoolError",
    "WrongSenderError",
]


class RejectReason(StrEnum):
    """Why an instance was rejected (the value is the short reason shown to the site)."""

    NOT_DICOM = "not DICOM"
    NOT_ULTRASOUND = "not ultrasound"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported transfer syntax"
    CORRUPT_PIXEL_DATA = "corrupt pixel data"
    IMAGE_TOO_LARGE = "image too large"
    INVALID_HEADER = "invalid header"
    RESOURCE_LIMIT = "resource limit exceeded"
    TIMED_OUT = "timed out"
    WORKER_CRASHED = "worker crashed"


class IngestError(UsreviewError):
    """The hub could not accept an upload."""


class RefusedEnvelopeError(IngestError, InputError):
    """The envelope cannot be opened for this site: altered, truncated, expired, ...

    The :mod:`usreview.envelope` error that caused it is the ``__cause__``.
    """


class UnknownSiteError(RefusedEnvelopeError):
    """No key is registered for the site the upload claims to come from."""


class WrongSenderError(RefusedEnvelopeError):
    """The envelope is signed by a key that is not registered for the uploading site."""


class NotForHubError(RefusedEnvelopeError):
    """The envelope is not addressed to the hub's key (seal it to the hub's public key)."""


class ReplayedEnvelopeError(RefusedEnvelopeError):
    """The envelope was opened here before and its instance is no longer stored."""


class RejectedInstanceError(IngestError, InputError):
    """The plaintext is not an acceptable ultrasound instance.

    Parameters
    ----------
    reason
        Why, as a :class:`RejectReason`.
    detail
        One sentence naming what was wrong.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason = RejectReason(reason)
        self.detail = detail
        super().__init__(f"instance rejected ({self.reason.value}): {detail}")


class UidMismatchError(IngestError, InputError):
    """The instance's SOP Instance UID is not the one the upload named; nothing was stored."""


class InvalidReceiptError(IngestError):
    """A receipt whose signature, signer or content does not verify."""


class WorkerPoolError(IngestError):
    """The parsing pool cannot serve (closed, or its workers fail to start); send again later."""
