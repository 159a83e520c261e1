"""The durable archive of the hub: envelopes on disk, their index in a database.

>>> from usreview.store import Archive, InstanceMetadata, StudyStatus
>>> archive = Archive.open(None, "archive")            # doctest: +SKIP
>>> archive.recover()                                   # doctest: +SKIP
>>> archive.put("site-a", "in/0001.env", metadata)      # doctest: +SKIP
PutResult(record=InstanceRecord(...), duplicate=False)
>>> archive.receipts("site-a")                          # doctest: +SKIP
>>> archive.set_status(study_uid, StudyStatus.PROCESSED, actor="pipeline")  # doctest: +SKIP
>>> archive.results.publish_result("out/r.env", sites=["site-a"], study_instance_uid=uid,
...                                kind="report")      # doctest: +SKIP
>>> archive.results.results_since("site-a", cursor=0)   # doctest: +SKIP
>>> lease = archive.jobs.claim("worker-1", lease_seconds=60)  # doctest: +SKIP
>>> archive.review.worklist(Reviewer("dr-x"))           # doctest: +SKIP

Every stored instance gets a processing job in the same commit (:mod:`usreview.store.jobs`:
leases, retries with backoff, failures shown on the study). The review's records (the
worklist, automatic analyses, claims, published reports) are in :mod:`usreview.store.review`.
A study keeps the header's description of patient and study (first non-empty value).

``put`` returns only once the envelope is on disk (temp file, fsync, rename, directory
fsync) and its row committed (SQLite WAL with synchronous=FULL, or PostgreSQL by URL):
returning is the acknowledgement. The same plaintext again under a SOP Instance UID is a
duplicate (no-op); different bytes raise :class:`ConflictError` and are kept aside.
Listing and retrieval take the caller (a site name or a :class:`Reviewer`); another
site's records answer :class:`NotFoundError`, as missing ones do.

Errors (all :class:`usreview.errors.UsreviewError`)::

    StoreError
    ├── NotFoundError             no such record for this caller (forbidden = missing)
    ├── ConflictError             different content under a stored UID (kept aside)
    ├── InvalidTransitionError    a study status change that is not allowed
    ├── InvalidMetadataError      metadata that fails validation (also an InputError)
    ├── CorruptObjectError        a stored object is missing or its bytes changed
    ├── LeaseLostError            a processing job is no longer this worker's (in .jobs)
    ├── ClaimedError              another reviewer holds the study (in .review)
    ├── NotClaimedError           the reviewer holds no claim on the study (in .review)
    ├── NotReadyError             the study's processing is not through (in .review)
    ├── VersionTakenError         that report version was recorded meanwhile (in .review)
    ├── SchemaVersionError        the index was upgraded by a newer usreview (untouched)
    └── StorageError              the disk or the database failed; nothing acknowledged
"""

from __future__ import annotations

from usreview.store.archive import Archive
from usreview.store.errors import (
    ConflictError,
    CorruptObjectError,
    InvalidMetadataError,
    InvalidTransitionError,
    NotFoundError,
    SchemaVersionError,
    StorageError,
    StoreError,
)
from usreview.store.records import (
    Caller,
    ConflictRecord,
    InstanceMetadata,
    InstanceRecord,
    PutResult,
    Receipt,
    RecoveryReport,
    Reviewer,
    SiteActivity,
    StatusChange,
    StudyRecord,
)
from usreview.store.results import ResultFeed, ResultRecord
from usreview.store.status import TRANSITIONS, StudyStatus

__all__ = [
    "TRANSITIONS",
    "Archive",
    "Caller",
    "ConflictError",
    "ConflictRecord",
    "CorruptObjectError",
    "InstanceMetadata",
    "InstanceRecord",
    "InvalidMetadataError",
    "InvalidTransitionError",
    "NotFoundError",
    "PutResult",
    "Receipt",
    "RecoveryReport",
    "ResultFeed",
    "ResultRecord",
    "Reviewer",
    "SchemaVersionError",
    "SiteActivity",
    "StatusChange",
    "StorageError",
    "StoreError",
    "StudyRecord",
    "StudyStatus",
]
