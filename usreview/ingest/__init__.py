"""The ingest stage: accept a site's sealed instance, check it, store it, sign a receipt.

>>> from usreview.ingest import Ingestor, WorkerPool, verify_receipt
>>> pool = WorkerPool(2)                                                  # doctest: +SKIP
>>> ingestor = Ingestor(archive, hub_keys, {"site-a": site_a_pub}, None, pool, "quarantine")
>>> result = ingestor.ingest("site-a", "upload.env")                      # doctest: +SKIP
>>> verify_receipt(result.receipt.to_json(), hub_public)["sop_instance_uid"]  # doctest: +SKIP

Untrusted DICOM is parsed only in :class:`WorkerPool`'s spawned, ``setrlimit``-limited
processes; the archive stores the original envelope (encrypted at rest); the plaintext
lives only in a quarantine file removed before :meth:`Ingestor.ingest` returns.

Errors (all :class:`usreview.errors.UsreviewError`)::

    IngestError                         the hub could not accept an upload
    ├── RefusedEnvelopeError            the envelope does not open for this site (4xx)
    │   ├── UnknownSiteError            no key is registered for the site
    │   ├── WrongSenderError            signed by a key that is not the site's
    │   ├── NotForHubError              not addressed to the hub's key
    │   └── ReplayedEnvelopeError       opened before and no longer stored here
    ├── RejectedInstanceError           not an acceptable instance (4xx; ``reason``: not
    │                                   DICOM, not ultrasound, corrupt pixel data, image too
    │                                   large, resource limit exceeded, timed out, ...)
    ├── UidMismatchError                not the SOP Instance UID the upload named (4xx;
    │                                   in usreview.ingest.errors, not re-exported yet)
    ├── InvalidReceiptError             a receipt that does not verify
    └── WorkerPoolError                 the parsing pool cannot serve (5xx)

The store's :class:`~usreview.store.ConflictError` (different bytes under a stored
UID, 409) and :class:`~usreview.store.StorageError` (5xx) pass through unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usreview._lazy import lazy_attributes
from usreview.ingest.errors import (
    IngestError,
    InvalidReceiptError,
    NotForHubError,
    RefusedEnvelopeError,
    RejectedInstanceError,
    RejectReason,
    ReplayedEnvelopeError,
    UidMismatchError,
    UnknownSiteError,
    WorkerPoolError,
    WrongSenderError,
)

if TYPE_CHECKING:
    from usreview.ingest.pipeline import Ingestor, IngestResult, SiteKeys
    from usreview.ingest.receipts import (
        SignedReceipt,
        sign_batch_receipt,
        sign_instance_receipt,
        verify_receipt,
    )
    from usreview.ingest.worker import DEFAULT_MEMORY_LIMIT, ParsedInstance, WorkerPool

# Imported when first used: a parsing worker imports usreview.ingest.worker, and with it
# this package, and needs none of the archive, database or cryptography code.
_MODULES = {
    "Ingestor": "pipeline",
    "IngestResult": "pipeline",
    "SiteKeys": "pipeline",
    "SignedReceipt": "receipts",
    "sign_batch_receipt": "receipts",
    "sign_instance_receipt": "receipts",
    "verify_receipt": "receipts",
    "DEFAULT_MEMORY_LIMIT": "worker",
    "ParsedInstance": "worker",
    "WorkerPool": "worker",
}


__getattr__ = lazy_attributes(__name__, _MODULES)

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "IngestError",
    "IngestResult",
    "Ingestor",
    "InvalidReceiptError",
    "NotForHubError",
    "ParsedInstance",
    "RefusedEnvelopeError",
    "RejectReason",
    "RejectedInstanceError",
    "ReplayedEnvelopeError",
    "SignedReceipt",
    "SiteKeys",
    "UidMismatchError",
    "UnknownSiteError",
    "WorkerPool",
    "WorkerPoolError",
    "WrongSenderError",
    "sign_batch_receipt",
    "sign_instance_receipt",
    "verify_receipt",
]
