"""What reviewers work with: the worklist, automatic analyses, claims, published reports.

>>> review = archive.review                                       # doctest: +SKIP
>>> review.restrict("dr-x", {"north", "south"}, actor="admin")  # doctest: +SKIP
>>> review.worklist(review.reviewer("dr-x"))                      # north and south only
>>> review.priors(Reviewer("dr-x"), study_uid)                    # the patient's other studies
>>> review.record_analysis(sop_uid, signature, summary)           # the processing worker
>>> review.claim(Reviewer("dr-x"), study_uid, seconds=1200)       # doctest: +SKIP
>>> slot = review.report_slot(Reviewer("dr-x"), study_uid)        # doctest: +SKIP
>>> review.record_report(Reviewer("dr-x"), study_uid, slot.version, ...)  # doctest: +SKIP

Sites: a reviewer reads every site's studies unless an administrator restricted them
(:meth:`ReviewStore.restrict`, kept in ``reviewer_sites``); :meth:`ReviewStore.reviewer`
gives the :class:`Reviewer` with their sites, which every query below honours.

Claims: a study has at most one claim (a row keyed by the study). Claiming locks the
study's row in a write transaction (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR
UPDATE`` on PostgreSQL), so of two reviewers claiming at once exactly one wins; the other
gets :class:`ClaimedError` until the claim expires or is released. The holder renews by
claiming again. Claiming a processed study moves it to ``in_review``; a study still
``received`` (or ``failed``) keeps its status: the reviewer may read it, and it becomes
processed when its jobs are done. Releasing a study in review sends it back to
``processed``.

Reports: :meth:`ReviewStore.report_slot` checks that the caller holds the claim and that
the study is processed (or in review, or already published: an amendment), and gives the
next version; :meth:`ReviewStore.record_report` records it once its results are
published, moves the study to ``published`` (an amendment leaves a published or
delivered study as it is) and releases the claim. A recorded version is never changed.

Errors (all :class:`usreview.store.StoreError`): :class:`ClaimedError` (another reviewer
holds the study), :class:`NotClaimedError` (the caller holds no claim),
:class:`NotReadyError` (the study's processing is not through), :class:`VersionTakenError`
(that version was recorded meanwhile); :class:`NotFoundError` for a study or instance the
caller may not see, a site included (sites never review).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from usreview.store._shared import change_status, guard
from usreview.store.database import writer
from usreview.store.errors import InvalidMetadataError, NotFoundError, StoreError
from usreview.store.jobs_schema import JobRow, JobStatus
from usreview.store.queries import visible
from usreview.store.records import Caller, Reviewer, validate_site
from usreview.store.review_schema import AnalysisRow, ClaimRow, ReportRow, ReviewerSitesRow
from usreview.store.schema import InstanceRow, SeriesRow, SiteRow, StudyRow
from usreview.store.status import StudyStatus
from usreview.store.worklist import ClaimRecord, WorklistEntry, claim_record, glance, worklist

if TYPE_CHECKING:
    from usreview.store.archive import Archive

__all__ = [
    "AnalysisRecord",
    "ClaimRecord",
    "ClaimedError",
    "InstanceState",
    "NotClaimedError",
    "NotReadyError",
    "ReportRecord",
    "ReportSlot",
    "ReviewStore",
    "VersionTakenError",
    "WorklistEntry",
]

#: Study statuses from which a report may be published (the later two: an amendment).
#: A study whose automatic processing failed is reported on what the reviewer sees: the
#: failure is stated on its instances, and an administrator may still retry the jobs.
_PUBLISHABLE = (
    StudyStatus.PROCESSED,
    StudyStatus.IN_REVIEW,
    StudyStatus.FAILED,
    StudyStatus.PUBLISHED,
    StudyStatus.DELIVERED,
)
#: The status changes that publishing a report makes, by the study's status.
_ON_PUBLISH = {
    StudyStatus.PROCESSED: (StudyStatus.IN_REVIEW, StudyStatus.PUBLISHED),
    StudyStatus.FAILED: (StudyStatus.IN_REVIEW, StudyStatus.PUBLISHED),
    StudyStatus.IN_REVIEW: (StudyStatus.PUBLISHED,),
}
#: Claiming moves a study of these statuses into review.
_CLAIMABLE_INTO_REVIEW = (StudyStatus.PROCESSED, StudyStatus.FAILED)
_PROCESSING = {
    JobStatus.PENDING: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.DONE: "done",
    JobStatus.FAILED: "failed",
}


def _moment(at: datetime) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


class ClaimedError(StoreError):
    """Another reviewer holds an unexpired claim on the study (``claim`` says who)."""

    def __init__(self, claim: ClaimRecord) -> None:
        self.claim = claim
        super().__init__(f"claimed by {claim.reviewer} until {_moment(claim.expires_at)}")


class NotClaimedError(StoreError):
    """The caller holds no claim on the study: claim it first."""


class NotReadyError(StoreError):
    """The study cannot be reported yet: its automatic processing is not through."""


class VersionTakenError(StoreError):
    """That report version was recorded meanwhile (publish again from the new version)."""


@dataclass(frozen=True, slots=True)
class AnalysisRecord:
    """The automatic results of one instance (the processing worker's JSON summary)."""

    sop_instance_uid: str
    study_instance_uid: str
    signature: str
    summary: Mapping[str, Any]
    flagged: bool
    headlines: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class InstanceState:
    """An instance's latest analysis (``None`` until there is one), processing job, equipment.

    ``processing`` is ``queued``, ``running``, ``done`` or ``failed``; ``reason`` is the
    failure, the last error before a retry, or the problem noted on a finished job.
    """

    sop_instance_uid: str
    analysis: Mapping[str, Any] | None
    processing: str
    reason: str | None
    manufacturer: str | None
    model_name: str | None


@dataclass(frozen=True, slots=True)
class ReportRecord:
    """One published version of a study's report.

    ``results`` holds the feed cursors: ``report`` (the SR), ``summary`` (the text) and
    ``key_images`` (each key image sent to the recipients).
    """

    study_instance_uid: str
    version: int
    reviewer: str
    published_at: datetime
    urgency: str
    recipients: tuple[str, ...]
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    results: Mapping[str, Any]
    supersedes: int | None
    content: Mapping[str, Any]

    @property
    def cursors(self) -> list[int]:
        """Every result cursor of this version, the SR's first."""
        found = [self.results.get("report"), self.results.get("summary")]
        found += list(self.results.get("key_images") or ())
        return [int(c) for c in found if c is not None]


@dataclass(frozen=True, slots=True)
class ReportSlot:
    """What publishing a report needs to know: its version, the one it amends, the site."""

    version: int
    previous: ReportRecord | None
    site: str


class ReviewStore:
    """The review's records in the archive (get it as :attr:`usreview.store.Archive.review`)."""

    def __init__(self, archive: Archive) -> None:
        self._engine: Engine = archive._engine
        self._writer = writer(self._engine)
        self._clock: Callable[[], datetime] = archive._clock

    # -- who reads which sites -----------------------------------------------------------

    def reviewer(self, name: str) -> Reviewer:
        """``name`` as a reviewer: restricted to their sites, or every site (the default)."""
        with guard("reading the reviewers' sites"), Session(self._engine) as session:
            row = session.get(ReviewerSitesRow, name)
        return Reviewer(name, None if row is None else frozenset(row.sites))

    def restrict(self, name: str, sites: Iterable[str] | None, *, actor: str) -> Reviewer:
        """Restrict reviewer ``name`` to ``sites``; ``None`` gives them every site again.

        Raises
        ------
        InvalidMetadataError
            An invalid reviewer or site name, or no site at all (use ``None`` for all).
        """
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise InvalidMetadataError("a reviewer's name is 1 to 128 characters")
        chosen = None if sites is None else sorted({validate_site(site) for site in sites})
        if chosen == []:
            raise InvalidMetadataError(
                f"give {name} at least one site (or every site, the default)"
            )
        with guard("restricting a reviewer"), Session(self._writer) as session, session.begin():
            row = session.get(ReviewerSitesRow, name, with_for_update=True)
            if chosen is None:
                if row is not None:
                    session.delete(row)
            elif row is None:
                session.add(ReviewerSitesRow(
                    reviewer=name, sites=chosen, changed_at=self._clock(), changed_by=actor
                ))  # fmt: skip
            else:
                row.sites, row.changed_at, row.changed_by = chosen, self._clock(), actor
        return Reviewer(name, None if chosen is None else frozenset(chosen))

    # -- the worklist --------------------------------------------------------------------

    def worklist(
        self,
        caller: Caller,
        *,
        status: StudyStatus | str | None = None,
        site: str | None = None,
    ) -> list[WorklistEntry]:
        """The studies visible to ``caller`` (in ``status``, of ``site``), newest first."""
        wanted = None if status is None else StudyStatus(status)
        with guard("reading the worklist"), Session(self._engine) as session:
            return worklist(session, caller, self._clock(), status=wanted, site=site)

    def entry(self, caller: Caller, study_instance_uid: str) -> WorklistEntry:
        """One study's worklist entry.

        Raises
        ------
        NotFoundError
            Missing, or of a site the caller may not see.
        """
        with guard("reading the worklist"), Session(self._engine) as session:
            found = worklist(session, caller, self._clock(), study_instance_uid=study_instance_uid)
        if not found:
            raise NotFoundError(f"no study {study_instance_uid}")
        return found[0]

    def priors(self, caller: Caller, study_instance_uid: str) -> list[WorklistEntry]:
        """The patient's other studies at the study's site that ``caller`` may see.

        The same site and Patient ID (unique within a site only) and, when both studies
        record one, the same birth date; newest first by the date a reader is shown (the
        study date, else the day received). Empty for a study without a Patient ID.

        Raises
        ------
        NotFoundError
            Missing, or of a site the caller may not see.
        """
        study = self.entry(caller, study_instance_uid)
        if study.patient_id is None:
            return []
        with guard("reading the worklist"), Session(self._engine) as session:
            same = worklist(
                session, caller, self._clock(), site=study.site, patient_id=study.patient_id
            )
        born = study.patient_birth_date
        others = [
            other
            for other in same
            if other.study_instance_uid != study_instance_uid
            and (born is None or other.patient_birth_date in (None, born))
        ]
        return sorted(others, key=_shown_day, reverse=True)  # stable: ties newest received

    # -- analyses ------------------------------------------------------------------------

    def record_analysis(
        self, sop_instance_uid: str, signature: str, summary: Mapping[str, Any] | bytes | str
    ) -> AnalysisRecord:
        """Keep the automatic results of an instance; the same signature again is a no-op.

        Parameters
        ----------
        sop_instance_uid
            The stored instance they are about.
        signature
            The processors and versions that made them (1 to 64 characters).
        summary
            The JSON summary: a JSON object, or its text.

        Raises
        ------
        NotFoundError
            No such instance.
        InvalidMetadataError
            ``signature`` or ``summary`` is malformed.
        """
        if not isinstance(signature, str) or not 0 < len(signature) <= 64:
            raise InvalidMetadataError("signature must be 1 to 64 characters")
        try:
            text = summary if isinstance(summary, bytes | str) else json.dumps(summary)
            document = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InvalidMetadataError(f"summary is not JSON ({exc})") from None
        if not isinstance(document, dict):
            raise InvalidMetadataError("summary must be a JSON object")
        flagged, headlines = glance(document)
        for _ in range(2):
            known = self._analysis(sop_instance_uid, signature)
            if known is not None:
                return known
            try:
                self._add_analysis(sop_instance_uid, signature, document, flagged, headlines)
            except StoreError as exc:
                if not isinstance(exc.__cause__, IntegrityError):
                    raise
                continue  # recorded concurrently: read it back
        found = self._analysis(sop_instance_uid, signature)
        if found is None:
            raise NotFoundError(f"no analysis of {sop_instance_uid}")
        return found

    def _add_analysis(
        self,
        sop_instance_uid: str,
        signature: str,
        document: dict[str, Any],
        flagged: bool,
        headlines: list[str],
    ) -> None:
        with (
            guard("recording an analysis"),
            Session(self._writer) as session,
            session.begin(),
        ):
            instance = session.execute(
                select(InstanceRow.id, InstanceRow.study_id).where(
                    InstanceRow.sop_instance_uid == sop_instance_uid
                )
            ).one_or_none()
            if instance is None:
                raise NotFoundError(f"no instance {sop_instance_uid}")
            session.add(
                AnalysisRow(
                    instance_id=instance.id,
                    study_id=instance.study_id,
                    signature=signature,
                    summary=document,
                    flagged=flagged,
                    headlines=headlines,
                    created_at=self._clock(),
                )
            )

    def analysis(self, caller: Caller, sop_instance_uid: str) -> AnalysisRecord:
        """The latest analysis of an instance visible to ``caller``.

        Raises
        ------
        NotFoundError
            No such instance, not visible, or not analysed yet.
        """
        found = self._analysis(sop_instance_uid, None, caller)
        if found is None:
            raise NotFoundError(f"no analysis of instance {sop_instance_uid}")
        return found

    def _analysis(
        self, sop_instance_uid: str, signature: str | None, caller: Caller | None = None
    ) -> AnalysisRecord | None:
        stmt = (
            select(AnalysisRow, StudyRow.study_instance_uid)
            .join(InstanceRow, AnalysisRow.instance_id == InstanceRow.id)
            .join(StudyRow, AnalysisRow.study_id == StudyRow.id)
            .join(SiteRow, InstanceRow.site_id == SiteRow.id)
            .where(InstanceRow.sop_instance_uid == sop_instance_uid)
            .order_by(AnalysisRow.id.desc())
            .limit(1)
        )
        if signature is not None:
            stmt = stmt.where(AnalysisRow.signature == signature)
        if caller is not None:
            stmt = stmt.where(visible(caller))
        with guard("reading the analyses"), Session(self._engine) as session:
            found = session.execute(stmt).one_or_none()
        if found is None:
            return None
        row, study_uid = found
        return AnalysisRecord(
            sop_instance_uid=sop_instance_uid,
            study_instance_uid=study_uid,
            signature=row.signature,
            summary=row.summary,
            flagged=row.flagged,
            headlines=tuple(row.headlines),
            created_at=row.created_at,
        )

    def instance_states(self, caller: Caller, study_instance_uid: str) -> dict[str, InstanceState]:
        """Each instance of a visible study: its latest analysis and its processing job."""
        latest = (
            select(func.max(AnalysisRow.id))
            .where(AnalysisRow.instance_id == InstanceRow.id)
            .correlate(InstanceRow)
            .scalar_subquery()
        )
        stmt = (
            select(InstanceRow.sop_instance_uid, JobRow, AnalysisRow.summary, SeriesRow)
            .join(SiteRow, InstanceRow.site_id == SiteRow.id)
            .join(SeriesRow, InstanceRow.series_id == SeriesRow.id)
            .join(StudyRow, InstanceRow.study_id == StudyRow.id)
            .join(JobRow, JobRow.instance_id == InstanceRow.id)
            .outerjoin(AnalysisRow, AnalysisRow.id == latest)
            .where(StudyRow.study_instance_uid == study_instance_uid, visible(caller))
        )
        states: dict[str, InstanceState] = {}
        with guard("reading the analyses"), Session(self._engine) as session:
            for uid, job, summary, series in session.execute(stmt):
                reason = job.note if job.status is JobStatus.DONE else job.last_error
                states[uid] = InstanceState(
                    uid,
                    summary,
                    _PROCESSING[job.status],
                    reason,
                    series.manufacturer,
                    series.model_name,
                )
        return states

    # -- claims --------------------------------------------------------------------------

    def claim(self, caller: Caller, study_instance_uid: str, *, seconds: float) -> ClaimRecord:
        """Claim a study for ``seconds`` (or renew the caller's own claim).

        A processed study moves to ``in_review``; other statuses are kept.

        Raises
        ------
        ClaimedError
            Another reviewer holds an unexpired claim.
        NotFoundError
            No such study for this caller (sites never claim).
        """
        if not seconds > 0:
            raise InvalidMetadataError("seconds must be positive")
        reviewer = _reviewer(caller, study_instance_uid)
        now = self._clock()
        expires = now + timedelta(seconds=seconds)
        with guard("claiming a study"), Session(self._writer) as session, session.begin():
            study = _locked_study(session, reviewer, study_instance_uid)
            row = session.get(ClaimRow, study.id, with_for_update=True)
            if row is not None and row.reviewer != reviewer.name and row.expires_at > now:
                raise ClaimedError(claim_record(row, study_instance_uid))
            if row is None:
                row = ClaimRow(study_id=study.id, reviewer=reviewer.name, claimed_at=now)
                session.add(row)
            elif row.reviewer != reviewer.name or row.expires_at <= now:
                row.reviewer, row.claimed_at = reviewer.name, now
            row.expires_at = expires
            if study.status in _CLAIMABLE_INTO_REVIEW:
                why = f"claimed by {reviewer.name}"
                change_status(session, study, StudyStatus.IN_REVIEW, now, why, reviewer.name)
            session.flush()
            return claim_record(row, study_instance_uid)

    def release(
        self, caller: Caller, study_instance_uid: str, *, force: bool = False
    ) -> ClaimRecord | None:
        """Give a claimed study back; return the claim released (``None``: none held).

        ``force`` (an administrator) releases another reviewer's claim. A study in review
        goes back to ``processed`` (``failed`` when one of its jobs failed).

        Raises
        ------
        ClaimedError
            Another reviewer holds an unexpired claim (and ``force`` is false).
        NotFoundError
            No such study for this caller.
        """
        reviewer = _reviewer(caller, study_instance_uid)
        now = self._clock()
        with guard("releasing a study"), Session(self._writer) as session, session.begin():
            study = _locked_study(session, reviewer, study_instance_uid)
            row = session.get(ClaimRow, study.id, with_for_update=True)
            if row is None:
                return None
            record = claim_record(row, study_instance_uid)
            live = row.expires_at > now
            if live and row.reviewer != reviewer.name and not force:
                raise ClaimedError(record)
            session.delete(row)
            if study.status is StudyStatus.IN_REVIEW:
                why = f"released by {reviewer.name}"
                failed = session.scalar(
                    select(func.count())
                    .select_from(JobRow)
                    .where(JobRow.study_id == study.id, JobRow.status == JobStatus.FAILED)
                )
                back = StudyStatus.FAILED if failed else StudyStatus.PROCESSED
                change_status(session, study, back, now, why, reviewer.name)
            session.flush()
        return record if live else None

    def current_claim(self, caller: Caller, study_instance_uid: str) -> ClaimRecord | None:
        """The unexpired claim on a study visible to ``caller``, if any."""
        return self.entry(caller, study_instance_uid).claim

    # -- reports -------------------------------------------------------------------------

    def report_slot(self, caller: Caller, study_instance_uid: str) -> ReportSlot:
        """Check that ``caller`` may publish a report of the study now; its next version.

        Raises
        ------
        NotClaimedError
            The caller holds no claim on the study.
        ClaimedError
            Another reviewer holds it.
        NotReadyError
            The study is still being processed.
        NotFoundError
            No such study for this caller.
        """
        reviewer = _reviewer(caller, study_instance_uid)
        now = self._clock()
        with guard("reading the reports"), Session(self._engine) as session:
            study, site = _visible_study(session, reviewer, study_instance_uid)
            row = session.get(ClaimRow, study.id)
            if row is None or row.expires_at <= now:
                raise NotClaimedError(
                    f"claim study {study_instance_uid} before publishing its report"
                )
            if row.reviewer != reviewer.name:
                raise ClaimedError(claim_record(row, study_instance_uid))
            if study.status not in _PUBLISHABLE:
                raise NotReadyError(_not_ready(study))
            previous = session.scalars(
                select(ReportRow)
                .where(ReportRow.study_id == study.id)
                .order_by(ReportRow.version.desc())
                .limit(1)
            ).first()
            last = None if previous is None else _report(previous, study_instance_uid)
        return ReportSlot(1 if last is None else last.version + 1, last, site)

    def record_report(
        self,
        caller: Caller,
        study_instance_uid: str,
        version: int,
        *,
        urgency: str,
        recipients: Sequence[str],
        sop_instance_uid: str,
        series_instance_uid: str,
        sop_class_uid: str,
        results: Mapping[str, Any],
        supersedes: int | None,
        content: Mapping[str, Any],
    ) -> ReportRecord:
        """Record a published report version; publish the study; release the claim.

        Raises
        ------
        VersionTakenError
            ``version`` is not the next one (recorded meanwhile).
        NotFoundError
            No such study for this caller.
        """
        reviewer = _reviewer(caller, study_instance_uid)
        now = self._clock()
        try:
            with (
                guard("recording a report"),
                Session(self._writer) as session,
                session.begin(),
            ):
                study = _locked_study(session, reviewer, study_instance_uid)
                last = session.scalar(
                    select(func.max(ReportRow.version)).where(ReportRow.study_id == study.id)
                )
                if version != (last or 0) + 1:
                    raise VersionTakenError(
                        f"report version {version} of study {study_instance_uid} "
                        "was published meanwhile"
                    )
                row = ReportRow(
                    study_id=study.id,
                    version=version,
                    reviewer=reviewer.name,
                    published_at=now,
                    urgency=urgency,
                    recipients=sorted(recipients),
                    sop_instance_uid=sop_instance_uid,
                    series_instance_uid=series_instance_uid,
                    sop_class_uid=sop_class_uid,
                    results=dict(results),
                    supersedes=supersedes,
                    content=json.loads(json.dumps(content)),
                )
                session.add(row)
                why = f"report version {version} published"
                for status in _ON_PUBLISH.get(study.status, ()):
                    change_status(session, study, status, now, why, reviewer.name)
                session.execute(
                    delete(ClaimRow).where(
                        and_(ClaimRow.study_id == study.id, ClaimRow.reviewer == reviewer.name)
                    )
                )
                session.flush()
                return _report(row, study_instance_uid)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise VersionTakenError(
                    f"report version {version} of study {study_instance_uid} was published "
                    "meanwhile"
                ) from exc
            raise

    def reports(self, caller: Caller, study_instance_uid: str) -> list[ReportRecord]:
        """Every published version of a visible study's report, oldest first.

        Raises
        ------
        NotFoundError
            No such study for this caller.
        """
        with guard("reading the reports"), Session(self._engine) as session:
            study, _ = _visible_study(session, caller, study_instance_uid)
            rows = session.scalars(
                select(ReportRow).where(ReportRow.study_id == study.id).order_by(ReportRow.version)
            )
            return [_report(row, study_instance_uid) for row in rows]


def _shown_day(entry: WorklistEntry) -> str:
    """The study's date (YYYY-MM-DD), else the day it was received (UTC)."""
    return entry.study_date or entry.created_at.date().isoformat()


def _reviewer(caller: Caller, study_instance_uid: str) -> Reviewer:
    if not isinstance(caller, Reviewer):  # a site: the study is not there for it
        raise NotFoundError(f"no study {study_instance_uid}")
    return caller


def _visible_study(session: Session, caller: Caller, uid: str) -> tuple[StudyRow, str]:
    found = session.execute(
        select(StudyRow, SiteRow.name)
        .join(SiteRow, StudyRow.site_id == SiteRow.id)
        .where(StudyRow.study_instance_uid == uid, visible(caller))
    ).one_or_none()
    if found is None:
        raise NotFoundError(f"no study {uid}")
    return found[0], found[1]


def _locked_study(session: Session, caller: Caller, uid: str) -> StudyRow:
    """The visible study's row, locked until the transaction ends."""
    study = session.scalars(
        select(StudyRow)
        .join(SiteRow, StudyRow.site_id == SiteRow.id)
        .where(StudyRow.study_instance_uid == uid, visible(caller))
        .with_for_update(of=StudyRow)
    ).one_or_none()
    if study is None:
        raise NotFoundError(f"no study {uid}")
    return study


def _not_ready(study: StudyRow) -> str:
    uid = study.study_instance_uid
    return f"study {uid} is still being processed: publish its report once it is processed"


def _report(row: ReportRow, study_instance_uid: str) -> ReportRecord:
    return ReportRecord(
        study_instance_uid=study_instance_uid,
        version=row.version,
        reviewer=row.reviewer,
        published_at=row.published_at,
        urgency=row.urgency,
        recipients=tuple(row.recipients),
        sop_instance_uid=row.sop_instance_uid,
        series_instance_uid=row.series_instance_uid,
        sop_class_uid=row.sop_class_uid,
        results=dict(row.results),
        supersedes=row.supersedes,
        content=dict(row.content),
    )
