"""The durable processing queue: one job per stored instance, taken with leases.

>>> queue = archive.jobs                                    # doctest: +SKIP
>>> lease = queue.claim("worker-1", lease_seconds=60)       # doctest: +SKIP
>>> queue.renew(lease, 60)                                  # doctest: +SKIP
>>> queue.complete(lease)                                   # doctest: +SKIP

The archive creates the job in the same transaction as the instance's row, so a stored
instance always has one. A claim takes the oldest ready job (pending and due, or running
with an expired lease) and gives it a new lease token: on PostgreSQL with
``SELECT ... FOR UPDATE SKIP LOCKED``, on SQLite with one ``UPDATE ... RETURNING``
statement inside ``BEGIN IMMEDIATE``. Every claim counts as an attempt. A failed attempt
goes back to pending after an exponential backoff (:class:`RetryPolicy`); after the last
attempt, or when a worker's lease expired on it that many times, the job is ``failed``
and its study too, with the reason (reviewers see it in the study's record).

Completing a job moves its study to ``processed`` once none of its jobs is pending or
running (and none failed). An administrator re-queues a failed job with :meth:`JobQueue.retry`
(``usreview hub jobs --retry ID``), and queues a finished one again with
:meth:`JobQueue.reprocess` (``--reprocess ID``: after a processor's version changed; the
new results supersede the older ones). Only the holder of the current lease token may renew,
complete or fail a job (:class:`LeaseLostError` otherwise), so a job finishes once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, Engine, Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from usreview.store._shared import change_status, guard
from usreview.store.database import writer
from usreview.store.errors import InvalidTransitionError, NotFoundError, StoreError
from usreview.store.jobs_schema import JobRow, JobStatus
from usreview.store.schema import InstanceRow, SiteRow, StudyRow
from usreview.store.status import StudyStatus

if TYPE_CHECKING:
    from usreview.store.archive import Archive

__all__ = [
    "JobQueue",
    "JobRecord",
    "JobStatus",
    "Lease",
    "LeaseLostError",
    "RetryPolicy",
    "outdated_processors",
]

#: Who the queue names in a study's status history.
ACTOR = "processing"
#: Study statuses that automatic processing may change (a study in review is left alone).
_OURS = (StudyStatus.RECEIVED, StudyStatus.PROCESSED)


class LeaseLostError(StoreError):
    """The job is no longer held with this lease (it expired and another worker took it)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how soon a failing job is tried again.

    Attempt ``n`` (from 1) that fails waits ``min(maximum, initial * 2 ** (n - 1))``
    seconds; after ``max_attempts`` the job is failed.
    """

    max_attempts: int = 5
    initial: float = 10.0
    maximum: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy: argument 'max_attempts' must be at least 1")
        if not 0 <= self.initial <= self.maximum:
            raise ValueError("RetryPolicy: need 0 <= 'initial' <= 'maximum'")

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the failed attempt number ``attempts``."""
        return float(min(self.maximum, self.initial * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A processing job and the instance it is for."""

    id: int
    site: str
    study_instance_uid: str
    sop_instance_uid: str
    status: JobStatus
    attempts: int
    available_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    note: str | None
    created_at: datetime
    finished_at: datetime | None
    #: The processors of its last run as ``name=version`` (``None``: not recorded).
    processors: tuple[str, ...] | None = None
    #: The image kinds of its instance (:class:`~usreview.dicom.ImageKind` values).
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed job: hold it by renewing before ``expires_at``."""

    job: JobRecord
    token: str
    expires_at: datetime


class JobQueue:
    """The archive's processing jobs (get it as :attr:`usreview.store.Archive.jobs`).

    Parameters
    ----------
    archive
        The archive whose database holds the jobs.
    policy
        Retries and backoff.
    """

    def __init__(self, archive: Archive, policy: RetryPolicy | None = None) -> None:
        self._engine: Engine = archive._engine
        self._writer = writer(self._engine)
        self._clock: Callable[[], datetime] = archive._clock
        self.policy = policy or RetryPolicy()

    # -- workers -----------------------------------------------------------------------

    def claim(self, owner: str, lease_seconds: float) -> Lease | None:
        """Take the oldest ready job for ``lease_seconds``; ``None`` when none is ready.

        Jobs whose lease expired after their last attempt are failed first.
        """
        now = self._clock()
        token = secrets.token_hex(16)
        expires = now + timedelta(seconds=lease_seconds)
        values = {
            "status": JobStatus.RUNNING,
            "attempts": JobRow.attempts + 1,
            "lease_owner": owner[:128],
            "lease_token": token,
            "lease_expires_at": expires,
        }
        with guard("claiming a job"), Session(self._writer) as session, session.begin():
            postgres = session.get_bind().dialect.name == "postgresql"
            self._give_up_lost(session, now, postgres)
            pick = (
                select(JobRow.id)
                .where(self._ready(now))
                .order_by(JobRow.available_at, JobRow.id)
                .limit(1)
            )
            if postgres:
                job_id = session.scalars(pick.with_for_update(skip_locked=True)).first()
                if job_id is None:
                    return None
                session.execute(
                    update(JobRow).where(JobRow.id == job_id).values(**values),
                    execution_options={"synchronize_session": False},
                )
            else:  # one statement; BEGIN IMMEDIATE already serialises SQLite's writers
                job_id = session.scalars(
                    update(JobRow)
                    .where(JobRow.id == pick.scalar_subquery())
                    .values(**values)
                    .returning(JobRow.id),
                    execution_options={"synchronize_session": False},
                ).first()
                if job_id is None:
                    return None
            record = self._record(session, job_id)
        return Lease(record, token, expires)

    def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        """Extend ``lease`` by ``lease_seconds`` from now.

        Raises
        ------
        LeaseLostError
            Another worker holds the job now, or it is finished.
        """
        expires = self._clock() + timedelta(seconds=lease_seconds)
        with guard("renewing a lease"), Session(self._writer) as session, session.begin():
            row = _held(session, lease)
            row.lease_expires_at = expires
        return replace(lease, expires_at=expires)

    def complete(
        self,
        lease: Lease,
        *,
        problem: str | None = None,
        processors: Sequence[str] | None = None,
    ) -> JobRecord:
        """Mark the job done; its study becomes processed when nothing else is open.

        ``problem`` (a processor failed, outputs were still published) is kept as the
        job's note and marks the study failed with it. ``processors`` (``name=version``
        of each processor that ran) is kept with the job: :func:`outdated_processors`
        tells which a newer registry has changed.

        Raises
        ------
        LeaseLostError
            The lease is no longer this worker's: it must not finish the job.
        """
        now = self._clock()
        with guard("completing a job"), Session(self._writer) as session, session.begin():
            row = _held(session, lease)
            row.status = JobStatus.DONE
            row.finished_at = now
            row.note = problem
            if processors is not None:
                row.processors = " ".join(sorted(processors))
            _clear_lease(row)
            session.flush()
            _settle_study(session, row.study_id, now, problem)
            return self._record(session, row.id)

    def fail(self, lease: Lease, reason: str, *, final: bool = False) -> JobRecord:
        """Record a failed attempt: retry after the backoff, or fail job and study
        (at once with ``final``: trying again cannot help).

        Raises
        ------
        LeaseLostError
            The lease is no longer this worker's.
        """
        now = self._clock()
        with guard("failing a job"), Session(self._writer) as session, session.begin():
            row = _held(session, lease)
            if final:
                _give_up(session, row, now, reason)
            elif row.attempts >= self.policy.max_attempts:
                _give_up(session, row, now, f"failed {row.attempts} times, last: {reason}")
            else:
                row.status = JobStatus.PENDING
                row.available_at = now + timedelta(seconds=self.policy.delay(row.attempts))
                row.last_error = reason
                _clear_lease(row)
            session.flush()
            return self._record(session, row.id)

    def release(self, lease: Lease) -> None:
        """Give the job back untried (the worker is stopping); the attempt is not counted."""
        with guard("releasing a job"), Session(self._writer) as session, session.begin():
            try:
                row = _held(session, lease)
            except LeaseLostError:
                return
            row.status = JobStatus.PENDING
            row.attempts = max(0, row.attempts - 1)
            row.available_at = self._clock()
            _clear_lease(row)

    # -- administrators ----------------------------------------------------------------

    def retry(self, job_id: int, *, actor: str = "admin") -> JobRecord:
        """Put the failed job ``job_id`` back in the queue, due now, with all its attempts.

        Its last error is kept until it runs again; its study, if failed, goes back to
        received (and becomes processed, or failed again, when its jobs are through).
        ``actor`` is named in the study's status history.

        Raises
        ------
        NotFoundError
            No such job.
        InvalidTransitionError
            The job is not failed (only a failed job is retried).
        """
        return self._requeue(job_id, (JobStatus.FAILED,), "retried", actor)

    def reprocess(self, job_id: int, *, actor: str = "admin") -> JobRecord:
        """Queue the finished (done or failed) job ``job_id`` again, due now.

        For an instance to be processed with newer processor versions: the worker's new
        results supersede the older ones (:mod:`usreview.processing.supersede`). Its study,
        if processed or failed, goes back to received until its jobs are through again; a
        study in review or published keeps its status.

        Raises
        ------
        NotFoundError
            No such job.
        InvalidTransitionError
            The job is pending or running.
        """
        finished = (JobStatus.DONE, JobStatus.FAILED)
        return self._requeue(job_id, finished, "queued again", actor)

    def _requeue(
        self, job_id: int, allowed: tuple[JobStatus, ...], what: str, actor: str
    ) -> JobRecord:
        now = self._clock()
        with guard("queueing a job"), Session(self._writer) as session, session.begin():
            row = session.scalars(
                select(JobRow).where(JobRow.id == job_id).with_for_update()
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            if row.status not in allowed:
                can = " or ".join(status.value for status in allowed)
                raise InvalidTransitionError(
                    f"job {job_id} is {row.status.value}: only a {can} job can be {what}"
                )
            row.status = JobStatus.PENDING
            row.attempts = 0
            row.available_at = now
            row.finished_at = None
            row.note = None
            _clear_lease(row)
            study = session.scalars(
                select(StudyRow).where(StudyRow.id == row.study_id).with_for_update()
            ).one()
            if study.status in (StudyStatus.FAILED, StudyStatus.PROCESSED):
                change_status(
                    session, study, StudyStatus.RECEIVED, now, f"job {job_id} {what}", actor
                )
            session.flush()
            return self._record(session, row.id)

    def backfill(self) -> int:
        """Queue a job for every stored instance that has none; return how many were made.

        Instances stored before the archive had a queue (or restored from elsewhere) are
        otherwise never processed. Running it again makes nothing twice.
        """
        now = self._clock()
        with guard("queueing jobs"), Session(self._writer) as session, session.begin():
            missing = session.execute(
                select(InstanceRow.id, InstanceRow.study_id)
                .outerjoin(JobRow, JobRow.instance_id == InstanceRow.id)
                .where(JobRow.id.is_(None))
                .order_by(InstanceRow.id)
            ).all()
            for instance_id, study_id in missing:
                session.add(
                    JobRow(
                        instance_id=instance_id,
                        study_id=study_id,
                        status=JobStatus.PENDING,
                        attempts=0,
                        available_at=now,
                        created_at=now,
                    )
                )
            return len(missing)

    # -- reading ---------------------------------------------------------------------

    def get(self, job_id: int) -> JobRecord:
        """The job ``job_id``.

        Raises
        ------
        NotFoundError
            No such job.
        """
        with guard("reading the jobs"), Session(self._engine) as session:
            return self._record(session, job_id)

    def list_jobs(
        self, *, status: JobStatus | str | None = None, limit: int | None = None
    ) -> list[JobRecord]:
        """Jobs (in ``status`` if given), oldest first."""
        stmt = _query().order_by(JobRow.id)
        if status is not None:
            stmt = stmt.where(JobRow.status == JobStatus(status))
        if limit is not None:
            stmt = stmt.limit(limit)
        with guard("reading the jobs"), Session(self._engine) as session:
            return [_record(*found) for found in session.execute(stmt)]

    def counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each status."""
        stmt = select(JobRow.status, func.count(JobRow.id)).group_by(JobRow.status)
        with guard("reading the jobs"), Session(self._engine) as session:
            found: dict[JobStatus, int] = {s: int(n) for s, n in session.execute(stmt)}
        return {status: found.get(status, 0) for status in JobStatus}

    # -- helpers -----------------------------------------------------------------------

    def _ready(self, now: datetime) -> ColumnElement[bool]:
        return or_(
            and_(JobRow.status == JobStatus.PENDING, JobRow.available_at <= now),
            and_(
                JobRow.status == JobStatus.RUNNING,
                JobRow.lease_expires_at <= now,
                JobRow.attempts < self.policy.max_attempts,
            ),
        )

    def _give_up_lost(self, session: Session, now: datetime, postgres: bool) -> None:
        lost = select(JobRow).where(
            JobRow.status == JobStatus.RUNNING,
            JobRow.lease_expires_at <= now,
            JobRow.attempts >= self.policy.max_attempts,
        )
        if postgres:
            lost = lost.with_for_update(skip_locked=True)
        for row in session.scalars(lost).all():
            reason = f"its worker stopped answering {row.attempts} times (lease expired)"
            _give_up(session, row, now, reason)

    def _record(self, session: Session, job_id: int) -> JobRecord:
        found = session.execute(_query().where(JobRow.id == job_id)).one_or_none()
        if found is None:
            raise NotFoundError(f"no job {job_id}")
        return _record(*found)


def _query() -> Select[JobRow, str, str, str, list[str]]:
    return (
        select(
            JobRow,
            SiteRow.name,
            StudyRow.study_instance_uid,
            InstanceRow.sop_instance_uid,
            InstanceRow.kinds,
        )
        .join(InstanceRow, JobRow.instance_id == InstanceRow.id)
        .join(SiteRow, InstanceRow.site_id == SiteRow.id)
        .join(StudyRow, JobRow.study_id == StudyRow.id)
    )


def _record(row: JobRow, site: str, study_uid: str, sop_uid: str, kinds: list[str]) -> JobRecord:
    return JobRecord(
        id=row.id,
        site=site,
        study_instance_uid=study_uid,
        sop_instance_uid=sop_uid,
        status=row.status,
        attempts=row.attempts,
        available_at=row.available_at,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        last_error=row.last_error,
        note=row.note,
        created_at=row.created_at,
        finished_at=row.finished_at,
        processors=None if row.processors is None else tuple(row.processors.split()),
        kinds=tuple(kinds or ()),
    )


def _held(session: Session, lease: Lease) -> JobRow:
    row = session.scalars(
        select(JobRow).where(JobRow.id == lease.job.id).with_for_update()
    ).one_or_none()
    if row is None or row.status is not JobStatus.RUNNING or row.lease_token != lease.token:
        raise LeaseLostError(
            f"job {lease.job.id} is no longer held by this worker (its lease expired and "
            "another worker took it, or it is finished)"
        )
    return row


def _clear_lease(row: JobRow) -> None:
    row.lease_owner = None
    row.lease_token = None
    row.lease_expires_at = None


def _give_up(session: Session, row: JobRow, now: datetime, reason: str) -> None:
    row.status = JobStatus.FAILED
    row.finished_at = now
    row.last_error = reason
    _clear_lease(row)
    session.flush()
    uid = session.scalars(
        select(InstanceRow.sop_instance_uid).where(InstanceRow.id == row.instance_id)
    ).one()
    _settle_study(session, row.study_id, now, f"processing instance {uid}: {reason}")


def _settle_study(session: Session, study_id: int, now: datetime, problem: str | None) -> None:
    """Fail the study with ``problem``, or mark it processed once all its jobs are done."""
    study = session.scalars(select(StudyRow).where(StudyRow.id == study_id).with_for_update()).one()
    if problem is not None:
        if study.status in _OURS:
            change_status(session, study, StudyStatus.FAILED, now, problem, ACTOR)
        return
    still_open = session.scalar(
        select(func.count(JobRow.id)).where(
            JobRow.study_id == study_id,
            JobRow.status.in_([JobStatus.PENDING, JobStatus.RUNNING]),
        )
    )
    if still_open or study.status is not StudyStatus.RECEIVED:
        return
    failed = session.scalars(
        select(JobRow.last_error).where(
            JobRow.study_id == study_id, JobRow.status == JobStatus.FAILED
        )
    ).first()
    if failed is not None:
        change_status(session, study, StudyStatus.FAILED, now, failed, ACTOR)
    else:
        change_status(
            session, study, StudyStatus.PROCESSED, now, "automatic processing done", ACTOR
        )


def outdated_processors(
    processors: Sequence[str], current: Mapping[str, str], expected: Iterable[str] = ()
) -> list[str]:
    """Which of a job's ``name=version`` processors ``current`` (name -> version) changed.

    Each as ``"name OLD -> NEW"``; a processor no longer registered is not counted (nothing
    would replace its results). Each name of ``expected`` (a key of ``current``: what
    would run on the job's instance now) that the job did not run counts as ``"name none -> NEW"``.

    >>> outdated_processors(["speckle_obnlm=1.0", "speckle_fast=1.0"], {"speckle_obnlm": "1.1"})
    ['speckle_obnlm 1.0 -> 1.1']
    >>> outdated_processors(["speckle_obnlm=1.1"], {"speckle_obnlm": "1.1", "value_ranges": "1.0"},
    ...                     expected=["value_ranges"])
    ['value_ranges none -> 1.0']
    """
    changed = []
    ran = set()
    for entry in processors:
        name, _, version = entry.partition("=")
        ran.add(name)
        now = current.get(name)
        if now is not None and now != version:
            changed.append(f"{name} {version} -> {now}")
    changed += [f"{name} none -> {current[name]}" for name in expected if name not in ran]
    return changed
