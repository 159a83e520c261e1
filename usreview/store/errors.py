"""Errors of the durable archive, all under :class:`StoreError`.

::

    StoreError                          the archive could not do what was asked
    ├── NotFoundError                   no such record for this caller (missing and
    │                                   forbidden answer alike)
    ├── ConflictError                   different content under an existing SOP Instance UID
    │                                   (the new envelope is kept aside, nothing overwritten)
    ├── InvalidTransitionError          a study status change that is not allowed
    ├── InvalidMetadataError            metadata that fails validation (also an InputError)
    ├── CorruptObjectError              a stored object is missing or its bytes changed
    ├── SchemaVersionError              the index was upgraded by a newer usreview
    └── StorageError                    the disk or the database failed; nothing was
                                        acknowledged, send again
"""

from __future__ import annotations

from usreview.errors import InputError, UsreviewError

__all__ = [
    "ConflictError",
    "CorruptObjectError",
    "InvalidMetadataError",
    "InvalidTransitionError",
    "NotFoundError",
    "SchemaVersionError",
    "StorageError",
    "StoreError",
]


class StoreError(UsreviewError):
    """The archive could not do what was asked."""


class NotFoundError(StoreError, LookupError):
    """No such record for this caller; records of other sites answer the same way."""


class ConflictError(StoreError):
    """Different content arrived under an SOP Instance UID that is already stored.

    The new envelope is kept aside in the conflicts area for an administrator;
    the stored instance is unchanged.

    Parameters
    ----------
    sop_instance_uid
        The UID that arrived again.
    conflict_id
        The row of the conflicts table that records the envelope kept aside.
    reason
        Why it conflicts, in a few words.
    """

    def __init__(self, sop_instance_uid: str, conflict_id: int, reason: str) -> None:
        self.sop_instance_uid = sop_instance_uid
        self.conflict_id = conflict_id
        self.reason = reason
        super().__init__(
            f"SOP Instance UID {sop_instance_uid} conflicts with what is stored ({reason}); "
            f"the envelope was kept aside as conflict {conflict_id} for an administrator "
            "and nothing was overwritten"
        )


class InvalidTransitionError(StoreError):
    """A study status change that the workflow does not allow."""


class InvalidMetadataError(StoreError, InputError):
    """Metadata that fails validation; the message names the argument."""


class CorruptObjectError(StoreError):
    """A stored object is missing or its bytes no longer match the recorded hash."""


class SchemaVersionError(StoreError):
    """The archive's index was upgraded by a newer usreview: this one leaves it untouched."""


class StorageError(StoreError):
    """The disk or the database failed; nothing was acknowledged, so send again."""
