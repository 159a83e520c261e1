"""The case library as the processing worker compares instances with it.

:class:`CaseLibrary` keeps the descriptors (:mod:`usreview.processing.similarity`) of the
teaching cases' de-identified instances. It reads them from the archive
(:meth:`~usreview.store.teaching.TeachingStore.library`) at most every
``refresh_seconds``, and the descriptor of each instance once; an instance without a
descriptor of the current version (a new case, or an upgrade) is opened from its encrypted
copy, described, and its descriptor recorded, so that each is computed once for all
workers; each such read is audited (action
``read``, resource ``teaching/CASE/instances/UID``, outcome ``described``). An instance that
cannot be described is logged and passed over until the worker restarts.

:meth:`CaseLibrary.similar` gives the cases most like an instance, never the case made of
the instance's own study.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from usreview.dicom import read
from usreview.errors import UsreviewError
from usreview.hub.audit import AuditAction, AuditLog
from usreview.processing.similarity import VERSION, Descriptor, LibraryEntry, Match, describe, rank
from usreview.store.teaching import LibraryItem, TeachingStore

__all__ = ["REFRESH_SECONDS", "CaseLibrary"]

#: How long the library read from the archive is used before it is read again.
REFRESH_SECONDS = 30.0
_log = logging.getLogger("usreview.worker")


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.scratch = scratch
        self.audit = audit
        self.actor = actor
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._loaded_at: float | None = None
        self._entries: list[tuple[str, LibraryEntry]] = []  # (source study, entry)
        self._descriptors: dict[str, Descriptor] = {}  # by SOP Instance UID, read once
        self._passed_over: set[str] = set()

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
        if self._loaded_at is None or now - self._loaded_at >= self.refresh_seconds:
            self._entries = self._read()
            self._loaded_at = now
        return self._entries

    def __len__(self) -> int:
        return len(self.entries())

    def _read(self) -> list[tuple[str, LibraryEntry]]:
        """The library now; descriptors are read (or made) only for instances new to us."""
        items = self.store.library()
        known = self._descriptors.keys() | self._passed_over
        new = [i.sop_instance_uid for i in items if i.sop_instance_uid not in known]
        recorded = self.store.descriptors(new) if new else {}
        entries = []
        for item in items:
            uid = item.sop_instance_uid
            if uid in self._passed_over:
                continue
            descriptor = self._descriptors.get(uid)
            if descriptor is None:
                descriptor = Descriptor.from_dict(recorded.get(uid))
                if descriptor is None or descriptor.version != VERSION:
                    descriptor = self._describe(item)
                if descriptor is None:
                    self._passed_over.add(uid)
                    continue
                self._descriptors[uid] = descriptor
            entries.append((item.study_instance_uid, LibraryEntry(item.case_uid, uid, descriptor)))
        return entries

    def _describe(self, item: LibraryItem) -> Descriptor | None:
        """Describe a copy and record its descriptor; ``None`` (logged) if it cannot be."""
        where = f"teaching case {item.case_uid}, instance {item.sop_instance_uid}"
        fd, name = tempfile.mkstemp(suffix=".dcm", dir=self.scratch)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(self.store.read_instance(item.case_uid, item.sop_instance_uid)[1])
            self.audit.record(
                self.actor,
                AuditAction.READ,
                f"teaching/{item.case_uid}/instances/{item.sop_instance_uid}",
                outcome="described",
            )
            descriptor = describe(read(path))
            if descriptor is not None:
                self.store.set_descriptor(item.sop_instance_uid, descriptor.as_dict())
            return descriptor
        except UsreviewError as exc:
            _log.warning("case library: %s is passed over: %s", where, exc)
            return None
        finally:
            path.unlink(missing_ok=True)
