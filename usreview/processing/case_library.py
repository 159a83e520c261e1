"""The case library as the processing worker compares instances with it.

:class:`CaseLibrary` keeps the descriptors (:mod:`usreview.processing.similarity`) of the
teaching cases' de-identified instances. It reads them from the archive
(:meth:`~usreview.store.teaching.TeachingStore.library`) every ``refresh_seconds`` and at
once when a case is made or removed (a one-row query per read tells), and the record of each
instance once; an instance without a valid
descriptor or marker (below) of the current version (a new case, an upgrade, a damaged
record) is opened from its encrypted copy, described, and its descriptor recorded, so that
each is computed once for all workers; each such read is audited (action ``read``, resource
``teaching/CASE/instances/UID``, outcome ``described``, then ``not described`` with the
reason when it cannot be).

Describing is work done in the worker's loop, which renews the leases of the jobs in flight
between steps: so each read of the library describes for at most ``describe_seconds``, the
rest is described by the next reads (the next jobs), and is compared once it is.
Workers describing at the same time (after an upgrade) take the instances in different
orders and look again for a descriptor just before describing, so that each instance is
seldom described twice.

An instance that cannot be described for a lasting reason gets, in place of its descriptor
(``teaching_instances.descriptor``), a marker::

    {"version": VERSION, "compared": false, "reason": "no kind that is compared (ecg)"}

It is so when it is of a kind that is not compared (:func:`describe` gives ``None``), or when
its copy, whose bytes are checked against their SHA-256, cannot be read or decoded (an
:class:`~usreview.errors.InputError`, unless a lack of memory, a failing disk or a decoder
not installed is the cause). No worker reads it again until
:data:`~usreview.processing.similarity.VERSION` changes: an instance with a marker of the
current version is known and left out of the library (no read, no audit line). A marker of
another version, or a damaged one (not JSON, other keys or types), counts as no record: the
copy is described again. An instance that cannot be described for a reason that may pass (a
copy missing or altered on disk, which an administrator may restore; a lack of memory; any
other error) is logged and passed over, not recorded, until the worker restarts; one the
archive cannot give or record now (its disk or database away, the audit log unwritable) is
tried again at the next refresh.

:meth:`CaseLibrary.similar` gives the cases most like an instance, never the case made of
the instance's own study.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from usreview.dicom import read
from usreview.errors import InputError, UnsupportedTransferSyntaxError, UsreviewError
from usreview.hub.audit import AuditAction, AuditLog
from usreview.hub.errors import AuditError
from usreview.processing.similarity import VERSION, Descriptor, LibraryEntry, Match, describe, rank
from usreview.store import StorageError
from usreview.store.teaching import LibraryItem, TeachingStore

__all__ = ["DESCRIBE_SECONDS", "REFRESH_SECONDS", "CaseLibrary"]

#: How long the library read from the archive is used before it is read again.
REFRESH_SECONDS = 30.0
#: How long one read of the library may spend describing instances (the rest wait).
DESCRIBE_SECONDS = 5.0
_log = logging.getLogger("usreview.worker")


class _Later(Enum):
    """An instance to describe at the next refresh (the archive failed for now)."""

    LATER = "later"


_LATER = _Later.LATER


class CaseLibrary:
    """The descriptors of the case library, kept fresh from ``store``.

    ``scratch`` is a private folder (mode 0700) for the moment a copy is described; the
    reads of copies go to ``audit`` as ``actor``'s.
    """

    def __init__(
        self,
        store: TeachingStore,
        scratch: Path,
        audit: AuditLog,
        actor: str,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        describe_seconds: float = DESCRIBE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.scratch = scratch
        self.audit = audit
        self.actor = actor
        self.refresh_seconds = refresh_seconds
        self.describe_seconds = describe_seconds
        self._clock = clock
        self._loaded_at: float | None = None
        self._entries: list[tuple[str, LibraryEntry]] = []  # (source study, entry)
        self._descriptors: dict[str, Descriptor] = {}  # by SOP Instance UID, read once
        self._passed_over: set[str] = set()  # marked, or not described until a restart
        self._pending = 0  # instances left for the next read (the time was up)
        self._mark: tuple[int, int] | None = None  # the library as last read

    @property
    def pending(self) -> int:
        """How many instances the last read left to describe (its time was up)."""
        return self._pending

    def similar(
        self, descriptor: Descriptor, study_instance_uid: str, *, limit: int = 3
    ) -> list[Match]:
        """The cases most like ``descriptor``, except the one of ``study_instance_uid``."""
        entries = self.entries()
        return rank(
            descriptor,
            (entry for study, entry in entries if study != study_instance_uid),
            limit=limit,
        )

    def entries(self) -> list[tuple[str, LibraryEntry]]:
        """The library's (source study, entry) pairs, read again when stale.

        Raises
        ------
        StorageError
            The archive cannot be read.
        """
        now = self._clock()
        mark = self.store.library_mark()  # a case made or removed: read again at once
        stale = (
            self._loaded_at is None
            or now - self._loaded_at >= self.refresh_seconds
            or mark != self._mark
        )
        if stale or self._pending:
            self._entries = self._read()
            if stale:
                self._loaded_at, self._mark = now, mark
        return self._entries

    def _read(self) -> list[tuple[str, LibraryEntry]]:
        """The library now; descriptors are read (or made) only for instances new to us."""
        items = self.store.library()
        known = self._descriptors.keys() | self._passed_over
        new = [i for i in items if i.sop_instance_uid not in known]
        recorded = self._recorded([i.sop_instance_uid for i in new])
        unrecorded = []
        for item in new:
            uid = item.sop_instance_uid
            if _marked(recorded.get(uid)):
                self._passed_over.add(uid)
            elif (descriptor := _current(recorded.get(uid))) is not None:
                self._descriptors[uid] = descriptor
            else:
                unrecorded.append(item)
        # Workers describing at once (all restarted by an upgrade) start apart.
        random.shuffle(unrecorded)
        started, self._pending = self._clock(), 0
        for item in unrecorded:
            if self._clock() - started >= self.describe_seconds:
                self._pending += 1
                continue
            uid = item.sop_instance_uid
            # Another worker may have described (or marked) it since the library was read.
            again = self._recorded([uid]).get(uid)
            found = None if _marked(again) else (_current(again) or self._describe(item))
            if found is None:
                self._passed_over.add(uid)
            elif found is not _LATER:
                self._descriptors[uid] = found
        return [
            (i.study_instance_uid, LibraryEntry(i.case_uid, i.sop_instance_uid, descriptor))
            for i in items
            if (descriptor := self._descriptors.get(i.sop_instance_uid)) is not None
        ]

    def _recorded(self, sop_instance_uids: Collection[str]) -> Mapping[str, Any]:
        """The descriptors and markers the archive holds for these instances; a record that
        does not even decode (damaged JSON) counts as none, so that it is made again."""
        if not sop_instance_uids:
            return {}
        try:
            return self.store.descriptors(sop_instance_uids)
        except StorageError:
            raise
        except Exception:  # one damaged record: ask for each alone
            if len(sop_instance_uids) == 1:
                _log.warning("case library: the descriptor of %s is damaged", *sop_instance_uids)
                return {}
            found: dict[str, Any] = {}
            for uid in sop_instance_uids:
                found.update(self._recorded([uid]))
            return found

    def _describe(self, item: LibraryItem) -> Descriptor | _Later | None:
        """Describe a copy and record its descriptor; ``None`` (logged; a marker recorded
        when the reason lasts) if it cannot be, :data:`_LATER` if the archive or the audit
        log fails for now."""
        where = f"teaching case {item.case_uid}, instance {item.sop_instance_uid}"
        resource = f"teaching/{item.case_uid}/instances/{item.sop_instance_uid}"
        try:
            data = self.store.read_instance(item.case_uid, item.sop_instance_uid)[1]
        except StorageError as exc:
            _log.warning("case library: %s is left for later: %s", where, exc)
            return _LATER
        except Exception as exc:  # a damaged copy or record, a case removed meanwhile
            _log.warning("case library: %s is passed over: %s", where, _reason(exc))
            return None
        try:
            fd, name = tempfile.mkstemp(suffix=".dcm", dir=self.scratch)
        except OSError as exc:
            _log.warning("case library: %s is left for later: %s", where, exc)
            return _LATER
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            self.audit.record(self.actor, AuditAction.READ, resource, outcome="described")
            try:
                instance = read(path)
                descriptor = describe(instance)
            except Exception as exc:  # whatever it meets (as the query's own descriptor)
                reason = _reason(exc)
                self.audit.record(
                    self.actor,
                    AuditAction.READ,
                    resource,
                    outcome="not described",
                    detail={"reason": reason[:300]},
                )
                _log.warning("case library: %s is passed over: %s", where, reason)
                if not _lasting(exc):
                    return None
                descriptor, record = None, _marker(reason)
            else:
                if descriptor is None:
                    reason = f"no kind that is compared ({', '.join(instance.kinds) or 'none'})"
                    self.audit.record(
                        self.actor,
                        AuditAction.READ,
                        resource,
                        outcome="not described",
                        detail={"reason": reason},
                    )
                    _log.info("case library: %s is passed over: %s", where, reason)
                record = descriptor.as_dict() if descriptor is not None else _marker(reason)
        except (OSError, AuditError) as exc:  # the scratch disk, the audit log
            _log.warning("case library: %s is left for later: %s", where, exc)
            return _LATER
        finally:
            path.unlink(missing_ok=True)
        try:
            self.store.set_descriptor(item.sop_instance_uid, record)
        except StorageError as exc:  # used (or passed over) all the same; recorded later
            _log.warning("case library: the record of %s is not kept: %s", where, exc)
        return descriptor


def _current(value: Any) -> Descriptor | None:
    """A recorded descriptor, if it is valid and of the current version (never a marker)."""
    if isinstance(value, dict) and "compared" in value:
        return None
    descriptor = Descriptor.from_dict(value)
    return descriptor if descriptor is not None and descriptor.version == VERSION else None


def _marker(reason: str) -> dict[str, Any]:
    """The record of an instance that is not compared while :data:`VERSION` holds."""
    return {"version": VERSION, "compared": False, "reason": reason[:300]}


def _marked(value: Any) -> bool:
    """Whether a record is a marker (:func:`_marker`) of the current version."""
    return (
        isinstance(value, dict)
        and value.keys() == {"version", "compared", "reason"}
        and value["version"] == VERSION
        and value["compared"] is False
        and isinstance(value["reason"], str)
    )


def _lasting(exc: BaseException) -> bool:
    """Whether describing a copy (its bytes checked) fails for good: an input error not
    caused by a lack of memory or a failing disk, nor a decoder that may yet be installed."""
    if not isinstance(exc, InputError) or isinstance(exc, UnsupportedTransferSyntaxError):
        return False
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, MemoryError | OSError):
            return False
        cause = cause.__cause__
    return True


def _reason(exc: BaseException) -> str:
    """What went wrong, for the log and the audit line (the error's class when it is not
    one of ours, whose messages say enough)."""
    return str(exc) if isinstance(exc, UsreviewError) else f"{type(exc).__name__}: {exc}"
