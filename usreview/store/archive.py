"""The durable archive: envelopes on disk, their index in a database, per-site views.

Storing follows one order, so that an acknowledged instance is never lost and no row
ever names a missing object:

1. look the SOP Instance UID up: the same plaintext again is a duplicate (nothing
   written), different content is a conflict (kept aside, :class:`ConflictError`);
2. write the envelope durably (temp file, fsync, rename, directory fsync);
3. commit the rows (SQLite WAL with synchronous=FULL, or PostgreSQL), with the
   instance's processing job (:mod:`usreview.store.jobs`);
4. return: returning is the acknowledgement.

Group commit. Step 3 goes through one :class:`~usreview._group_commit.GroupCommit` per
archive: while one transaction commits, the puts that reach step 3 wait, then share the
next transaction and its single fsync, inserted together with a few statements per
batch (:func:`~usreview.store.put_rows.insert_puts`). If one put's rows fail there (a
UID taken meanwhile, a constraint, a disk error on its rows), the transaction is rolled
back and the batch inserted again, each put in its own SAVEPOINT: the failing put rolls
back alone and the others commit. Every put still returns only after the shared commit
is durable, and if that commit fails, every put of the batch fails (nothing
acknowledged). Within this process the group commit is also the lock of step 3, so puts
never wait on each other in SQLite's busy handler.

A crash between 2 and 3 leaves an orphan object (the site had no acknowledgement and
sends again). :meth:`Archive.recover` never deletes an orphan: it cannot tell it from an
acknowledged envelope whose row is gone (an index restored from a backup older than the
objects), so it moves it to ``ROOT/orphans/`` under the same key, where an administrator
ingests it again (:mod:`usreview.store.orphans`, ``usreview hub orphans --reingest``).
Only a crash's temporary files (``tmp/``) are removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Self

from sqlalchemy import Engine, distinct, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from usreview._group_commit import GroupCommit
from usreview.store._shared import change_status, envelope_source, guard, site_row
from usreview.store.database import (
    create_schema,
    default_url,
    make_engine,
    writer,
)
from usreview.store.errors import (
    ConflictError,
    CorruptObjectError,
    InvalidMetadataError,
    InvalidTransitionError,
    NotFoundError,
    StorageError,
)
from usreview.store.migrate import check_version, upgrade
from usreview.store.objects import AREAS, ORPHANS, ObjectStore, WrittenObject
from usreview.store.orphans import recovery_lock
from usreview.store.put_rows import Changed, Put, check, insert_puts
from usreview.store.queries import (
    conflict_record,
    instance_record,
    instances_query,
    studies_query,
    study_record,
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
    validate_site,
)
from usreview.store.review_schema import ClaimRow  # noqa: F401  (its tables join Base)
from usreview.store.schema import (
    Base,
    ConflictRow,
    InstanceRow,
    SiteRow,
    StatusHistoryRow,
    StudyRow,
)
from usreview.store.status import StudyStatus, check_transition

if TYPE_CHECKING:
    from usreview.store.jobs import JobQueue
    from usreview.store.results import ResultFeed
    from usreview.store.review import ReviewStore

__all__ = ["ORPHANS", "Archive"]

_log = logging.getLogger(__name__)
_ATTEMPTS = 5
#: Most puts that share one transaction.
_GROUP_MAX = 64
_RESULTS_LOCK = threading.Lock()
_IN_CHUNK = 500


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Archive:
    """Envelopes durably on disk under ``root``, indexed in a database.

    Build it with :meth:`open`. Listing and retrieval take the caller: a site name
    (sees only its own records) or a :class:`~usreview.store.Reviewer`. Records of
    other sites answer :class:`NotFoundError`, exactly as missing ones.
    """

    def __init__(self, engine: Engine, objects: ObjectStore, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._writer = writer(engine)
        self._objects = objects
        self._clock = clock
        self._site_ids: dict[str, int] = {}  # of committed sites, for the group commit
        self._group: GroupCommit[Put, PutResult] = GroupCommit(
            self._commit_batch, max_batch=_GROUP_MAX
        )

    @classmethod
    def open(
        cls,
        url: str | None,
        root: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> Archive:
        """Open (creating if needed) the archive at ``root`` indexed at ``url``.

        Parameters
        ----------
        url
            SQLAlchemy URL of the index: ``None`` for SQLite in ``root/index.sqlite3``,
            ``sqlite:///PATH``, or ``postgresql://USER@HOST/DB`` (psycopg 3).
        root
            Folder of the envelope objects (``objects/``, ``conflicts/``, ``tmp/``).
        clock
            Returns the current aware UTC time (tests pass a fake one).

        Run :meth:`recover` after opening, before accepting envelopes.
        """
        root_path = Path(root)
        with guard("opening the archive"):
            objects = ObjectStore(root_path)
            engine = make_engine(url if url is not None else default_url(root_path))
            try:
                check_version(engine)
                create_schema(engine, Base.metadata)
                upgrade(engine)
            except BaseException:
                engine.dispose()
                raise
        return cls(engine, objects, clock)

    def close(self) -> None:
        """Close the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def root(self) -> Path:
        """The folder of the envelope objects."""
        return self._objects.root

    @property
    def results(self) -> ResultFeed:
        """The results feed for sites (:mod:`usreview.store.results`), one per archive."""
        with _RESULTS_LOCK:
            feed: ResultFeed | None = self.__dict__.get("_results")
            if feed is None:
                from usreview.store.results import ResultFeed

                with guard("opening the results feed"):
                    feed = ResultFeed(self._engine, self.root / "results", self._clock)
                self.__dict__["_results"] = feed
            return feed

    @property
    def jobs(self) -> JobQueue:
        """The processing queue (:mod:`usreview.store.jobs`) with the default retry policy."""
        from usreview.store.jobs import JobQueue

        return JobQueue(self)

    @property
    def review(self) -> ReviewStore:
        """What reviewers work with (:mod:`usreview.store.review`): worklist, analyses,
        claims, reports."""
        from usreview.store.review import ReviewStore

        return ReviewStore(self)

    # -- storing ---------------------------------------------------------------------

    def put(
        self, site: str, envelope: str | os.PathLike[str] | bytes, metadata: InstanceMetadata
    ) -> PutResult:
        """Store one envelope durably; return only once it is committed.

        Parameters
        ----------
        site
            The sending site (verified by the envelope layer).
        envelope
            The envelope as received: a file path or its bytes. It is stored as is
            (encrypted at rest).
        metadata
            The instance inside the envelope.

        Returns
        -------
        PutResult
            The stored record; ``duplicate`` when the same plaintext was already stored
            under this SOP Instance UID by this site (nothing written).

        Raises
        ------
        ConflictError
            Different content under a stored SOP Instance UID, or a UID in use by another
            site or study; the envelope is kept aside for an administrator.
        StorageError
            The disk or the database failed: nothing was acknowledged.
        """
        validate_site(site)
        if not isinstance(metadata, InstanceMetadata):
            raise InvalidMetadataError("metadata must be an InstanceMetadata")
        source = envelope_source(envelope)
        with guard("storing the envelope", acknowledged=False):
            for _ in range(_ATTEMPTS):
                try:
                    with self._engine.connect() as conn:
                        verdict = check(conn, site, metadata)
                    if isinstance(verdict, PutResult):
                        return verdict
                    if verdict is not None:
                        self._keep_aside(site, source, metadata, *verdict)
                    written = self._objects.write("objects", source)
                    return self._commit(site, metadata, written)
                except (Changed, IntegrityError):
                    continue  # a concurrent put took a UID or the site name: check again
        raise StorageError(
            f"storing {metadata.sop_instance_uid} kept colliding with concurrent writes; "
            "nothing was acknowledged, send again"
        )

    def _commit(self, site: str, meta: InstanceMetadata, written: WrittenObject) -> PutResult:
        """Commit the rows of a written object, in a transaction shared with other puts."""
        return self._group.submit((site, meta, written))

    def _commit_batch(self, puts: Sequence[Put]) -> list[PutResult | BaseException]:
        """One transaction for ``puts`` (see the module doc): all their rows at once, or,
        if a put's rows fail, each put in its own savepoint, so that only that one fails.
        A failed commit fails them all."""
        now = self._clock()
        inserted = False
        try:
            with self._writer.begin() as conn:
                outcomes: list[PutResult | BaseException] = []
                outcomes.extend(insert_puts(conn, puts, now, self._site_ids))
                inserted = True
            return outcomes
        except Exception as exc:
            if inserted:
                raise  # the commit failed: so do all the puts
            if len(puts) == 1:
                return [exc]
            _log.info("a batch of %d puts failed (%s): one at a time now", len(puts), exc)
        outcomes = []
        with self._writer.begin() as conn:
            for put in puts:
                try:
                    with conn.begin_nested():  # (a copy: the ids it finds may not commit)
                        outcomes.extend(insert_puts(conn, [put], now, dict(self._site_ids)))
                except Exception as exc:  # this put only: its savepoint is rolled back
                    outcomes.append(exc)
        return outcomes

    def _keep_aside(
        self,
        site: str,
        source: Path | bytes,
        meta: InstanceMetadata,
        admin_reason: str,
        site_reason: str,
    ) -> None:
        written = self._objects.write("conflicts", source)
        now = self._clock()
        with Session(self._writer) as session, session.begin():
            sender = site_row(session, site, now)
            row = ConflictRow(
                site_id=sender.id,
                sop_instance_uid=meta.sop_instance_uid,
                study_instance_uid=meta.study_instance_uid,
                series_instance_uid=meta.series_instance_uid,
                sop_class_uid=meta.sop_class_uid,
                kinds=[k.value for k in meta.kinds],
                plaintext_sha256=meta.plaintext_sha256,
                size=meta.size,
                envelope_sha256=written.sha256,
                object_key=written.key,
                reason=admin_reason,
                received_at=now,
            )
            session.add(row)
            session.flush()
            conflict_id = row.id
        raise ConflictError(meta.sop_instance_uid, conflict_id, site_reason)

    # -- retrieval (per caller) --------------------------------------------------------

    def get(self, caller: Caller, sop_instance_uid: str) -> InstanceRecord:
        """The record of one instance visible to ``caller``.

        Raises
        ------
        NotFoundError
            If it is missing or belongs to a site the caller may not see.
        """
        stmt = instances_query(caller).where(InstanceRow.sop_instance_uid == sop_instance_uid)
        with guard("reading the archive"), Session(self._engine) as session:
            found = session.execute(stmt).one_or_none()
        if found is None:
            raise NotFoundError(f"no instance {sop_instance_uid}")
        row, site, study_uid, series_uid = found
        return instance_record(row, site, study_uid, series_uid)

    def open_envelope(self, caller: Caller, sop_instance_uid: str) -> BinaryIO:
        """Open the stored envelope of an instance visible to ``caller`` for reading."""
        record = self.get(caller, sop_instance_uid)
        try:
            return self._objects.open(record.object_key)
        except FileNotFoundError:
            raise CorruptObjectError(
                f"the envelope of {sop_instance_uid} is missing from the archive; "
                "run fsck and tell an administrator"
            ) from None

    def read_envelope(self, caller: Caller, sop_instance_uid: str) -> bytes:
        """The stored envelope's bytes, checked against the hash recorded when stored.

        Raises
        ------
        CorruptObjectError
            If the object is missing or its bytes changed.
        """
        record = self.get(caller, sop_instance_uid)
        with self.open_envelope(caller, sop_instance_uid) as f:
            data = f.read()
        if len(data) != record.envelope_size or (
            hashlib.sha256(data).hexdigest() != record.envelope_sha256
        ):
            raise CorruptObjectError(
                f"the envelope of {sop_instance_uid} changed on disk; "
                "run fsck and tell an administrator"
            )
        return data

    def list_instances(
        self, caller: Caller, *, study_instance_uid: str | None = None
    ) -> list[InstanceRecord]:
        """Instances visible to ``caller`` (of one study if given), oldest first."""
        stmt = instances_query(caller).order_by(InstanceRow.received_at, InstanceRow.id)
        if study_instance_uid is not None:
            stmt = stmt.where(StudyRow.study_instance_uid == study_instance_uid)
        with guard("reading the archive"), Session(self._engine) as session:
            return [
                instance_record(row, site, study_uid, series_uid)
                for row, site, study_uid, series_uid in session.execute(stmt)
            ]

    def study(self, caller: Caller, study_instance_uid: str) -> StudyRecord:
        """One study visible to ``caller``, with its status.

        Raises
        ------
        NotFoundError
            If it is missing or belongs to a site the caller may not see.
        """
        stmt = studies_query(caller).where(StudyRow.study_instance_uid == study_instance_uid)
        with guard("reading the archive"), Session(self._engine) as session:
            found = session.execute(stmt).one_or_none()
        if found is None:
            raise NotFoundError(f"no study {study_instance_uid}")
        row, site, series, instances = found
        return study_record(row, site, series, instances)

    def list_studies(
        self, caller: Caller, *, status: StudyStatus | str | None = None
    ) -> list[StudyRecord]:
        """Studies visible to ``caller`` (in ``status`` if given), oldest first."""
        stmt = studies_query(caller).order_by(StudyRow.created_at, StudyRow.id)
        if status is not None:
            stmt = stmt.where(StudyRow.status == StudyStatus(status))
        with guard("reading the archive"), Session(self._engine) as session:
            return [
                study_record(row, site, series, instances)
                for row, site, series, instances in session.execute(stmt)
            ]

    def history(self, caller: Caller, study_instance_uid: str) -> list[StatusChange]:
        """Every status change of a study visible to ``caller``, oldest first."""
        self.study(caller, study_instance_uid)
        stmt = (
            select(StatusHistoryRow)
            .join(StudyRow, StatusHistoryRow.study_id == StudyRow.id)
            .where(StudyRow.study_instance_uid == study_instance_uid)
            .order_by(StatusHistoryRow.at, StatusHistoryRow.id)
        )
        with guard("reading the archive"), Session(self._engine) as session:
            return [
                StatusChange(
                    study_instance_uid=study_instance_uid,
                    previous=row.previous,
                    status=row.status,
                    at=row.at,
                    reason=row.reason,
                    actor=row.actor,
                )
                for row in session.scalars(stmt)
            ]

    def receipts(
        self,
        site: str,
        *,
        sop_instance_uids: Iterable[str] | None = None,
        since: datetime | None = None,
    ) -> list[Receipt]:
        """The instances of ``site`` that are durably stored (for a signed receipt).

        Parameters
        ----------
        site
            The site asking; only its own instances are listed.
        sop_instance_uids
            Restrict to these UIDs (the ones the site asks about); others are left out.
        since
            Only instances received at or after this aware time.

        Returns
        -------
        list of Receipt
            Ordered by time received, then UID.
        """
        validate_site(site)
        base = (
            select(InstanceRow, StudyRow.study_instance_uid)
            .join(SiteRow, InstanceRow.site_id == SiteRow.id)
            .join(StudyRow, InstanceRow.study_id == StudyRow.id)
            .where(SiteRow.name == site)
        )
        if since is not None:
            base = base.where(InstanceRow.received_at >= since)
        if sop_instance_uids is None:
            statements = [base]
        else:
            wanted = sorted(set(sop_instance_uids))
            statements = [
                base.where(InstanceRow.sop_instance_uid.in_(wanted[i : i + _IN_CHUNK]))
                for i in range(0, len(wanted), _IN_CHUNK)
            ]
        receipts: list[Receipt] = []
        with guard("reading the archive"), Session(self._engine) as session:
            for stmt in statements:
                receipts.extend(
                    Receipt(
                        sop_instance_uid=row.sop_instance_uid,
                        study_instance_uid=study_uid,
                        plaintext_sha256=row.plaintext_sha256,
                        size=row.size,
                        received_at=row.received_at,
                    )
                    for row, study_uid in session.execute(stmt)
                )
        receipts.sort(key=lambda r: (r.received_at, r.sop_instance_uid))
        return receipts

    # -- status ----------------------------------------------------------------------

    def set_status(
        self,
        study_instance_uid: str,
        status: StudyStatus | str,
        *,
        reason: str | None = None,
        actor: str | None = None,
        expected: StudyStatus | str | None = None,
    ) -> StudyRecord:
        """Move a study to ``status`` (for the hub's stages; sites do not call this).

        Parameters
        ----------
        study_instance_uid
            The study.
        status
            Its new status; the change must be allowed by :data:`TRANSITIONS`.
        reason, actor
            Kept in the history (a failure's reason is shown to reviewers).
        expected
            Change only if the study is in this status now (so that two workers
            cannot both claim it).

        Raises
        ------
        NotFoundError
            No such study.
        InvalidTransitionError
            The change is not allowed, or the study is not in ``expected``.
        """
        status = StudyStatus(status)
        now = self._clock()
        with (
            guard("changing a study's status"),
            Session(self._writer) as session,
            session.begin(),
        ):
            study = session.scalars(
                select(StudyRow)
                .where(StudyRow.study_instance_uid == study_instance_uid)
                .with_for_update()
            ).one_or_none()
            if study is None:
                raise NotFoundError(f"no study {study_instance_uid}")
            if expected is not None and study.status is not StudyStatus(expected):
                raise InvalidTransitionError(
                    f"study {study_instance_uid} is {study.status.value}, "
                    f"not {StudyStatus(expected).value}"
                )
            check_transition(study.status, status)
            change_status(session, study, status, now, reason, actor)
        return self.study(Reviewer("hub"), study_instance_uid)

    def site_activity(self) -> list[SiteActivity]:
        """Per site that ever sent anything: instances, studies, last upload, open conflicts.

        For administrators (no caller: every site), by site name.
        """
        counts = (
            select(
                SiteRow.name,
                func.count(InstanceRow.id),
                func.count(distinct(InstanceRow.study_id)),
                func.max(InstanceRow.received_at),
            )
            .select_from(SiteRow)
            .outerjoin(InstanceRow, InstanceRow.site_id == SiteRow.id)
            .group_by(SiteRow.name)
        )
        conflicts = (
            select(SiteRow.name, func.count(ConflictRow.id))
            .join(ConflictRow, ConflictRow.site_id == SiteRow.id)
            .where(ConflictRow.resolved_at.is_(None))
            .group_by(SiteRow.name)
        )
        with guard("reading the archive"), Session(self._engine) as session:
            open_conflicts = {name: int(n) for name, n in session.execute(conflicts)}
            return [
                SiteActivity(
                    site=name,
                    instances=int(instances),
                    studies=int(studies),
                    last_received=last,
                    open_conflicts=open_conflicts.get(name, 0),
                )
                for name, instances, studies, last in session.execute(counts.order_by(SiteRow.name))
            ]

    # -- conflicts (administrators) -------------------------------------------------

    def list_conflicts(self, *, unresolved_only: bool = True) -> list[ConflictRecord]:
        """Envelopes kept aside because they conflicted (for administrators), oldest first."""
        stmt = (
            select(ConflictRow, SiteRow.name)
            .join(SiteRow, ConflictRow.site_id == SiteRow.id)
            .order_by(ConflictRow.id)
        )
        if unresolved_only:
            stmt = stmt.where(ConflictRow.resolved_at.is_(None))
        with guard("reading the archive"), Session(self._engine) as session:
            return [conflict_record(row, name) for row, name in session.execute(stmt)]

    def conflict(self, conflict_id: int) -> ConflictRecord:
        """The conflict ``conflict_id``, resolved or not.

        Raises
        ------
        NotFoundError
            No such conflict.
        """
        with guard("reading the archive"), Session(self._engine) as session:
            row, name = _find_conflict(session, conflict_id)
            return conflict_record(row, name)

    def open_conflict(self, conflict_id: int) -> BinaryIO:
        """Open the envelope kept aside as conflict ``conflict_id`` for reading.

        Raises
        ------
        NotFoundError
            No such conflict.
        CorruptObjectError
            Its envelope is missing.
        """
        record = self.conflict(conflict_id)
        try:
            return self._objects.open(record.object_key)
        except FileNotFoundError:
            raise CorruptObjectError(
                f"the envelope of conflict {conflict_id} is missing from the archive; run fsck"
            ) from None

    def resolve_conflict(self, conflict_id: int, resolution: str) -> ConflictRecord:
        """Mark a conflict resolved with an administrator's note; its envelope stays kept."""
        now = self._clock()
        with guard("resolving a conflict"), Session(self._writer) as session, session.begin():
            row, name = _find_conflict(session, conflict_id)
            row.resolved_at = now
            row.resolution = resolution
            session.flush()
            return conflict_record(row, name)

    # -- recovery --------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Clear what interrupted writes left and check that every row has its object.

        Removes the temporary files of interrupted writes (``tmp/``). Moves each complete
        object that no row names (an orphan) to ``ROOT/orphans/`` under the same key,
        never deletes it: a crash's orphan was never acknowledged, but after an index
        restored older than the objects it was (:mod:`usreview.hub.backup`). Run it after
        :meth:`open` while no :meth:`put` is in flight; it waits for an orphan being
        ingested again (:func:`~usreview.store.orphans.recovery_lock`).
        """
        with guard("recovering the archive"), recovery_lock(self.root):
            temp_removed = self._objects.clean_tmp()
            referenced, rows = self._referenced()
            orphans = [k for k in self._on_disk() if k not in referenced]
            for key in orphans:
                self._objects.hold(key)
            if orphans:
                _log.warning(
                    "moved %d object(s) that no index row names to %s (the sites may hold "
                    "receipts for them: 'usreview hub orphans --reingest' stores them again): %s",
                    len(orphans),
                    self.root / ORPHANS,
                    ", ".join(orphans),
                )
            missing = [uid for uid, key, _, _ in rows if not self._objects.exists(key)]
        return RecoveryReport(
            temp_files_removed=temp_removed,
            orphans=tuple(orphans),
            missing=tuple(sorted(missing)),
            checked=len(rows),
        )

    def fsck(self) -> RecoveryReport:
        """Check every stored object's bytes against its row; change nothing."""
        missing: list[str] = []
        corrupt: list[str] = []
        with guard("checking the archive"):
            referenced, rows = self._referenced()
            orphans = [k for k in self._on_disk() if k not in referenced]
            for uid, key, sha, size in rows:
                try:
                    found = self._objects.hash(key)
                except FileNotFoundError:
                    missing.append(uid)
                    continue
                if found != (sha, size):
                    corrupt.append(uid)
        return RecoveryReport(
            orphans=tuple(orphans),
            missing=tuple(sorted(missing)),
            corrupt=tuple(sorted(corrupt)),
            checked=len(rows),
        )

    def _referenced(self) -> tuple[set[str], list[tuple[str, str, str, int]]]:
        with Session(self._engine) as session, session.begin():
            rows = [
                (uid, key, sha, size)
                for uid, key, sha, size in session.execute(
                    select(
                        InstanceRow.sop_instance_uid,
                        InstanceRow.object_key,
                        InstanceRow.envelope_sha256,
                        InstanceRow.envelope_size,
                    )
                )
            ]
            kept = set(session.scalars(select(ConflictRow.object_key)))
        return {key for _, key, _, _ in rows} | kept, rows

    def _on_disk(self) -> Iterator[str]:
        for area in AREAS:
            yield from self._objects.keys(area)


# -- helpers ---------------------------------------------------------------------------


def _find_conflict(session: Session, conflict_id: int) -> tuple[ConflictRow, str]:
    found = session.execute(
        select(ConflictRow, SiteRow.name)
        .join(SiteRow, ConflictRow.site_id == SiteRow.id)
        .where(ConflictRow.id == conflict_id)
    ).one_or_none()
    if found is None:
        raise NotFoundError(f"no conflict {conflict_id}")
    return found[0], found[1]
