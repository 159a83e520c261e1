"""The results feed: sealed results for sites, each read from a per-site cursor.

>>> feed = archive.results                                              # doctest: +SKIP
>>> feed.publish_result("out/report.env", sites=["site-a"], study_instance_uid=uid,
...                     kind="report", label="Echo report")             # doctest: +SKIP
ResultRecord(cursor=7, ...)
>>> feed.results_since("site-a", cursor=6, limit=100)                  # doctest: +SKIP
[ResultRecord(cursor=7, ...)]

A result is an envelope (already sealed to its sites) stored like an instance: written
durably (temp file, fsync, rename, directory fsync) under ``ROOT/results/`` and only then
committed; returning is the acknowledgement. Its cursor is a global sequence that only
grows, so a site that remembers the last cursor it saw misses nothing; each site sees
only the results addressed to it. A newer result may name the one it ``supersedes``: the
older one is marked ``superseded_by`` the newer in the same commit (a result is superseded
once, so versions form one chain; :meth:`ResultFeed.keyed_results` lists a chain by the
prefix of its idempotency keys).
Publishing with a ``key`` is idempotent: a key published before returns that result and
publishes nothing (automatic processing keys its outputs by instance and processor
versions, so a job run twice publishes once). Publishers in several processes hold a
shared lock on ``ROOT/results/publish.lock`` while they write; :meth:`ResultFeed.recover`
takes it exclusively, so it never moves an object that is about to be committed.

Recovery never deletes a result object that no row names: a crash's was never
published, but after an index restored older than the objects (:mod:`usreview.hub.backup`)
it was, and a site may have fetched it. It is moved to ``ROOT/results/orphans/KEY``
(:meth:`~usreview.store.objects.ObjectStore.hold`), as the archive holds its own.

Sealing again: an envelope has a validity window, so the hub replaces the envelope of a
result that a site fetches late (:meth:`ResultFeed.replace_envelope`: a new object written
the same way, then the row switched to it if it still names the old one, then the old
object removed). The result keeps its cursor and everything else: the site sees one
result, whose ``sha256`` is the new envelope's.

Waiting: :meth:`ResultFeed.wait_for_results` (threads) and
:meth:`ResultFeed.wait_for_results_async` (asyncio) return as soon as a result for the
site is published in this process, and re-check every ``poll`` seconds for results
published by other processes; :meth:`ResultFeed.subscribe` registers observers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from sqlalchemy import CursorResult, Engine, Select, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from usreview.dicom.header import is_uid
from usreview.store._shared import envelope_source, guard, site_row
from usreview.store.database import writer
from usreview.store.errors import CorruptObjectError, InvalidMetadataError, NotFoundError
from usreview.store.objects import ORPHANS, ObjectStore
from usreview.store.records import RecoveryReport, validate_site
from usreview.store.results_schema import ResultKeyRow, ResultRow, ResultSiteRow
from usreview.store.schema import SiteRow

__all__ = ["MAX_LIMIT", "ResultFeed", "ResultRecord"]

#: Most results one :meth:`ResultFeed.results_since` call returns.
MAX_LIMIT = 1000
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_KEY_MAX = 200
_log = logging.getLogger(__name__)

#: An observer of published results: the record and the sites it is addressed to.
Observer = Callable[["ResultRecord", tuple[str, ...]], None]


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One published result as a site sees it (its other addressees are not shown)."""

    cursor: int
    study_instance_uid: str
    kind: str
    label: str | None
    supersedes: int | None
    envelope_sha256: str
    envelope_size: int
    object_key: str
    published_at: datetime
    superseded_by: int | None = None


def _record(row: ResultRow) -> ResultRecord:
    return ResultRecord(
        cursor=row.id,
        study_instance_uid=row.study_instance_uid,
        kind=row.kind,
        label=row.label,
        supersedes=row.supersedes,
        envelope_sha256=row.envelope_sha256,
        envelope_size=row.envelope_size,
        object_key=row.object_key,
        published_at=row.published_at,
        superseded_by=row.superseded_by,
    )


class _Notifier:
    """Wakes threads, asyncio tasks and observers when a result is published."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.generation = 0
        self._events: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._observers: list[Observer] = []

    def notify(self, record: ResultRecord, sites: tuple[str, ...]) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()
            events = list(self._events)
            observers = list(self._observers)
        for loop, event in events:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(event.set)
        for observer in observers:
            try:
                observer(record, sites)
            except Exception:  # an observer must not undo a durable publish
                _log.exception("results observer %r failed", observer)

    def wait(self, generation: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.generation != generation, timeout)

    @contextlib.contextmanager
    def event(self, loop: asyncio.AbstractEventLoop) -> Iterator[asyncio.Event]:
        entry = (loop, asyncio.Event())
        with self._cond:
            self._events.add(entry)
        try:
            yield entry[1]
        finally:
            with self._cond:
                self._events.discard(entry)

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        with self._cond:
            self._observers.append(observer)

        def unsubscribe() -> None:
            with self._cond, contextlib.suppress(ValueError):
                self._observers.remove(observer)

        return unsubscribe


class ResultFeed:
    """Sealed results for sites, durably stored, read by cursor.

    Get it as :attr:`usreview.store.Archive.results` (one feed per archive object, so
    that waiters and publishers in one process share their wake-ups).
    """

    def __init__(self, engine: Engine, root: Path, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._writer = writer(engine)
        self._objects = ObjectStore(root)
        self._lock_path = Path(root) / "publish.lock"
        self._clock = clock
        self._notifier = _Notifier()

    @contextlib.contextmanager
    def _publish_lock(self, exclusive: bool) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # also releases the lock

    # -- publishing ------------------------------------------------------------------

    def publish_result(
        self,
        envelope: str | os.PathLike[str] | bytes,
        *,
        sites: Iterable[str],
        study_instance_uid: str,
        kind: str,
        label: str | None = None,
        supersedes: int | None = None,
        key: str | None = None,
    ) -> ResultRecord:
        """Store a sealed result for ``sites``; return only once it is committed.

        Parameters
        ----------
        envelope
            The result, sealed to the sites' keys: a file path or its bytes.
        sites
            The sites whose feeds show it (at least one).
        study_instance_uid
            The study it is about.
        kind
            What it is, as a short lower-case token (``report``, ``sr``, ``derived``...).
        label
            Text shown to people, optional.
        supersedes
            Cursor of an earlier result of the same study that this one replaces; it is
            marked superseded by this one (refused if another result superseded it).
        key
            Idempotency key (at most 200 characters): if a result was published under
            it, that result is returned and nothing is published.

        Raises
        ------
        InvalidMetadataError
            An argument fails validation (the message names it).
        StorageError
            The disk or the database failed; nothing was published.
        """
        names = tuple(
            sorted({validate_site(s) for s in ([sites] if isinstance(sites, str) else sites)})
        )
        if not names:
            raise InvalidMetadataError("sites: a result needs at least one site")
        if not is_uid(study_instance_uid):
            raise InvalidMetadataError("study_instance_uid must be a DICOM UID")
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise InvalidMetadataError(
                "kind must be 1-64 lower-case letters, digits or . _ -, starting with a letter"
            )
        if label is not None and not isinstance(label, str):
            raise InvalidMetadataError("label must be text or None")
        if key is not None and not (isinstance(key, str) and 0 < len(key) <= _KEY_MAX):
            raise InvalidMetadataError(f"key must be 1 to {_KEY_MAX} characters or None")
        source = envelope_source(envelope)
        if key is not None and (known := self.find_result(key)) is not None:
            return known
        with guard("publishing a result", acknowledged=False), self._publish_lock(False):
            try:
                record, fresh = self._commit(
                    source, names, study_instance_uid, kind, label, supersedes, key
                )
            except IntegrityError:  # a concurrent publish took the key first
                found = self.find_result(key) if key is not None else None
                if found is None:
                    raise
                record, fresh = found, False
        if fresh:
            self._notifier.notify(record, names)
        return record

    def _commit(
        self,
        source: Path | bytes,
        names: tuple[str, ...],
        study_instance_uid: str,
        kind: str,
        label: str | None,
        supersedes: int | None,
        key: str | None,
    ) -> tuple[ResultRecord, bool]:
        written = self._objects.write("objects", source)
        now = self._clock()
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text("LOCK TABLE results IN EXCLUSIVE MODE"))
            if key is not None:
                known = session.get(ResultKeyRow, key)
                if known is not None:  # the object may be shared with it: keep the file
                    row = session.get(ResultRow, known.result_id)
                    assert row is not None
                    return _record(row), False
            earlier = (
                None
                if supersedes is None
                else _check_supersedes(session, supersedes, study_instance_uid)
            )
            row = ResultRow(
                study_instance_uid=study_instance_uid,
                kind=kind,
                label=label,
                supersedes=supersedes,
                object_key=written.key,
                envelope_sha256=written.sha256,
                envelope_size=written.size,
                published_at=now,
            )
            session.add(row)
            session.flush()
            if earlier is not None:
                earlier.superseded_by = row.id
            for name in names:
                site_id = site_row(session, name, now).id
                session.add(ResultSiteRow(result_id=row.id, site_id=site_id))
            if key is not None:
                session.add(ResultKeyRow(key=key, result_id=row.id))
            return _record(row), True

    def find_result(self, key: str) -> ResultRecord | None:
        """The result published under idempotency ``key``, or ``None`` (hub-side only)."""
        stmt = select(ResultRow).join(ResultKeyRow, ResultKeyRow.result_id == ResultRow.id)
        with guard("reading the results feed"), Session(self._engine) as session:
            row = session.scalars(stmt.where(ResultKeyRow.key == key)).one_or_none()
            return None if row is None else _record(row)

    def keyed_results(self, prefix: str) -> list[tuple[ResultRecord, str]]:
        """Results whose idempotency key starts with ``prefix``, oldest first, with their keys.

        Hub-side only (publishers find the versions of one result this way).
        """
        if not isinstance(prefix, str) or not 0 < len(prefix) <= _KEY_MAX:
            raise InvalidMetadataError(f"prefix must be 1 to {_KEY_MAX} characters")
        stmt = (
            select(ResultRow, ResultKeyRow.key)
            .join(ResultKeyRow, ResultKeyRow.result_id == ResultRow.id)
            .where(ResultKeyRow.key.startswith(prefix, autoescape=True))
            .order_by(ResultRow.id)
        )
        with guard("reading the results feed"), Session(self._engine) as session:
            return [(_record(row), key) for row, key in session.execute(stmt)]

    # -- reading (per site) -----------------------------------------------------------

    def results_since(self, site: str, cursor: int = 0, limit: int = 100) -> list[ResultRecord]:
        """Results addressed to ``site`` with a cursor above ``cursor``, oldest first."""
        validate_site(site)
        if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
            raise InvalidMetadataError(f"cursor must be a non-negative integer (got {cursor!r})")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidMetadataError(f"limit must be 1 to {MAX_LIMIT} (got {limit!r})")
        stmt = _addressed(site).where(ResultRow.id > cursor).order_by(ResultRow.id).limit(limit)
        with guard("reading the results feed"), Session(self._engine) as session:
            return [_record(row) for row in session.scalars(stmt)]

    def get_result(self, site: str, cursor: int) -> ResultRecord:
        """The result ``cursor`` if it is addressed to ``site``.

        Raises
        ------
        NotFoundError
            Missing or addressed to other sites (both answer alike).
        """
        validate_site(site)
        with guard("reading the results feed"), Session(self._engine) as session:
            row = session.scalars(_addressed(site).where(ResultRow.id == cursor)).one_or_none()
            if row is None:
                raise NotFoundError(f"no result {cursor}")
            return _record(row)

    def read_result(self, site: str, cursor: int) -> bytes:
        """The sealed result's bytes, checked against the hash recorded when published.

        Raises
        ------
        NotFoundError
            Missing or addressed to other sites.
        CorruptObjectError
            Its object is missing or changed on disk.
        """
        record = self.get_result(site, cursor)
        try:
            with self._objects.open(record.object_key) as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        if hashlib.sha256(data).hexdigest() != record.envelope_sha256:
            raise CorruptObjectError(
                f"result {cursor} is missing or changed on disk; tell an administrator"
            )
        return data

    def open_result(self, site: str, cursor: int) -> BinaryIO:
        """Open the sealed result for streaming (not hash-checked; see :meth:`read_result`)."""
        record = self.get_result(site, cursor)
        try:
            return self._objects.open(record.object_key)
        except FileNotFoundError:
            raise CorruptObjectError(f"result {cursor} is missing from disk") from None

    def open_record(self, record: ResultRecord) -> BinaryIO:
        """Open the envelope ``record`` names (hub-side: ``record`` comes from this feed).

        Raises :class:`FileNotFoundError` if that envelope is gone: it was replaced since
        ``record`` was read (:meth:`replace_envelope`), or is missing.
        """
        return self._objects.open(record.object_key)

    def result_sites(self, cursor: int) -> tuple[str, ...]:
        """The sites result ``cursor`` is addressed to, sorted (hub-side only)."""
        stmt = (
            select(SiteRow.name)
            .join(ResultSiteRow, ResultSiteRow.site_id == SiteRow.id)
            .where(ResultSiteRow.result_id == cursor)
            .order_by(SiteRow.name)
        )
        with guard("reading the results feed"), Session(self._engine) as session:
            return tuple(session.scalars(stmt))

    def replace_envelope(
        self, cursor: int, envelope: str | os.PathLike[str] | bytes, *, replaces: str
    ) -> tuple[ResultRecord, bool]:
        """Make ``envelope`` (the same result sealed again) the envelope of result ``cursor``.

        Hub-side only. The new envelope is written durably, then the row switched to it
        in one commit, only if its envelope is still the one whose SHA-256 is
        ``replaces``; the old object is then removed (unless another row names it). The
        result keeps its cursor, sites and metadata: no site sees a new result, and
        nobody is woken. Returns the result as it is now and whether this call replaced
        it (``False``: another process replaced it first; its envelope stays).

        Raises
        ------
        NotFoundError
            No result ``cursor``.
        StorageError
            The disk or the database failed; the result is as it was.
        """
        source = envelope_source(envelope)
        with guard("sealing a result again", acknowledged=False):
            with self._publish_lock(False):
                written = self._objects.write("objects", source)
                with Session(self._writer, expire_on_commit=False) as session, session.begin():
                    old_key = session.scalars(
                        select(ResultRow.object_key).where(ResultRow.id == cursor)
                    ).one_or_none()
                    if old_key is None:
                        raise NotFoundError(f"no result {cursor}")
                    switch = (
                        update(ResultRow)
                        .where(ResultRow.id == cursor, ResultRow.envelope_sha256 == replaces)
                        .values(
                            object_key=written.key,
                            envelope_sha256=written.sha256,
                            envelope_size=written.size,
                        )
                    )
                    # Compare and swap: of two concurrent replacements, one switches.
                    replaced = old_key != written.key and (
                        cast("CursorResult[Any]", session.execute(switch)).rowcount == 1
                    )
                    row = session.get(ResultRow, cursor, populate_existing=True)
                    assert row is not None
                    record = _record(row)
            if not replaced:
                self._remove_unreferenced(written.key)
                return record, False
            self._remove_unreferenced(old_key)
        return record, True

    def _remove_unreferenced(self, key: str) -> None:
        """Remove the object ``key`` if no result names it (publishers held off meanwhile,
        so an object about to be committed is never removed)."""
        with self._publish_lock(True):
            stmt = select(ResultRow.id).where(ResultRow.object_key == key).limit(1)
            with Session(self._engine) as session:
                if session.scalars(stmt).first() is None:
                    self._objects.remove(key)

    # -- waiting ----------------------------------------------------------------------

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(record, sites)`` after each publish; return the unsubscriber."""
        return self._notifier.subscribe(observer)

    def wait_for_results(
        self,
        site: str,
        cursor: int = 0,
        *,
        limit: int = 100,
        timeout: float = 30.0,
        poll: float = 5.0,
    ) -> list[ResultRecord]:
        """:meth:`results_since`, waiting up to ``timeout`` s for one if there is none."""
        deadline = time.monotonic() + timeout
        while True:
            generation = self._notifier.generation
            found = self.results_since(site, cursor, limit)
            left = deadline - time.monotonic()
            if found or left <= 0:
                return found
            self._notifier.wait(generation, min(left, poll))

    async def wait_for_results_async(
        self,
        site: str,
        cursor: int = 0,
        *,
        limit: int = 100,
        timeout: float = 30.0,
        poll: float = 5.0,
    ) -> list[ResultRecord]:
        """:meth:`wait_for_results` for asyncio (queries run in a thread)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._notifier.event(loop) as published:
            while True:
                published.clear()
                found = await asyncio.to_thread(self.results_since, site, cursor, limit)
                left = deadline - loop.time()
                if found or left <= 0:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(published.wait(), min(left, poll))

    # -- recovery ---------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Remove the temp files a crash left; move aside the objects no result names.

        Each such object goes to ``ROOT/results/orphans/`` under its key, never deleted
        (see the module docstring). Run it after opening, while nothing is being
        published. The report gives the temp files removed and the keys moved.
        """
        with guard("recovering the results feed"), self._publish_lock(True):
            removed = self._objects.clean_tmp()
            with Session(self._engine) as session:
                referenced = set(session.scalars(select(ResultRow.object_key)))
            orphans = [k for k in self._objects.keys("objects") if k not in referenced]
            for key in orphans:
                self._objects.hold(key)
        if orphans:
            _log.warning(
                "moved %d result object(s) that no row names to %s: %s",
                len(orphans),
                self._objects.root / ORPHANS,
                ", ".join(orphans),
            )
        return RecoveryReport(temp_files_removed=removed, orphans=tuple(orphans))


def _addressed(site: str) -> Select[ResultRow]:
    return (
        select(ResultRow)
        .join(ResultSiteRow, ResultSiteRow.result_id == ResultRow.id)
        .join(SiteRow, SiteRow.id == ResultSiteRow.site_id)
        .where(SiteRow.name == site)
    )


def _check_supersedes(session: Session, cursor: int, study_instance_uid: str) -> ResultRow:
    earlier = session.get(ResultRow, cursor)
    if earlier is None:
        raise InvalidMetadataError(f"supersedes: no result {cursor}")
    if earlier.study_instance_uid != study_instance_uid:
        raise InvalidMetadataError(
            f"supersedes: result {cursor} is about another study ({earlier.study_instance_uid})"
        )
    if earlier.superseded_by is not None:
        raise InvalidMetadataError(
            f"supersedes: result {cursor} is already superseded by result {earlier.superseded_by}"
        )
    return earlier
