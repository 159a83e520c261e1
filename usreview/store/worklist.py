"""The reviewers' worklist: every study with what a row of the list shows, in two queries.

The first query reads what each study's automatic analyses flag (:func:`glance`, computed
when an analysis is recorded); the second the studies with their counts (series,
instances, failed and done processing jobs, published reports: one grouped subquery per
table, restricted to the studies asked for), the latest report's urgency and the
unexpired claim. A study's ``urgency`` is the latest report's once one is
published; before that ``urgent`` when an analysis is flagged, ``routine`` once one of its
instances has been processed, else ``None``.

An analysis is flagged when a finding or recommendation says so itself (``abnormal`` or
``urgent`` true, or an ``urgency`` of urgent or critical), or when a recommendation's
category is not one of :data:`ROUTINE_CATEGORIES` (the bands of the processing rules that
state no abnormality).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Select, and_, case, func, select
from sqlalchemy.orm import Session, aliased

from usreview.dicom.enum import ImageKind
from usreview.store.jobs_schema import JobRow, JobStatus
from usreview.store.queries import visible
from usreview.store.records import STUDY_FIELDS, Caller
from usreview.store.review_schema import AnalysisRow, ClaimRow, ReportRow
from usreview.store.schema import InstanceRow, SeriesRow, SiteRow, StudyRow
from usreview.store.status import StudyStatus

__all__ = [
    "MAX_HEADLINES",
    "ROUTINE_CATEGORIES",
    "ClaimRecord",
    "WorklistEntry",
    "claim_record",
    "glance",
    "worklist",
]

#: Most headlines a study shows.
MAX_HEADLINES: Final = 3
#: Recommendation categories that state no abnormality (``vascular_rules``' normal bands).
ROUTINE_CATEGORIES: Final = frozenset({"ica_below_50"})
_LINE = 80
_KINDS: Final = {kind.value: kind for kind in ImageKind}
_FLAG_URGENCIES = ("urgent", "critical")


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """Who reviews a study, since when and until when (renewed by its holder)."""

    study_instance_uid: str
    reviewer: str
    claimed_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class WorklistEntry:
    """One study as the worklist shows it (header fields are ``None`` when not sent)."""

    site: str
    study_instance_uid: str
    status: StudyStatus
    reason: str | None
    created_at: datetime
    status_changed_at: datetime
    series: int
    instances: int
    kinds: tuple[ImageKind, ...]
    patient_name: str | None
    patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_description: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    referring_physician_name: str | None
    urgency: str | None
    findings: tuple[str, ...]
    claim: ClaimRecord | None
    failed_jobs: int
    reports: int


def glance(summary: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Whether an automatic summary is flagged, and its headlines (flagged ones first).

    ``summary`` is the processing worker's JSON (``findings`` and ``recommendations``
    lists); anything else in it is ignored, and so are malformed items.
    """
    items: list[tuple[bool, str]] = []
    for rec in _dicts(summary.get("recommendations")):
        flagged = _says_flagged(rec) or rec.get("category") not in ROUTINE_CATEGORIES
        items.append((flagged, _recommendation_line(rec)))
    for finding in _dicts(summary.get("findings")):
        items.append((_says_flagged(finding), _first_clause(str(finding.get("text") or ""))))
    items.sort(key=lambda item: not item[0])
    return any(flag for flag, _ in items), _unique(text for _, text in items)


def worklist(
    session: Session,
    caller: Caller,
    now: datetime,
    *,
    status: StudyStatus | None = None,
    site: str | None = None,
    study_instance_uid: str | None = None,
    patient_id: str | None = None,
) -> list[WorklistEntry]:
    """The studies visible to ``caller`` (filtered as asked), newest first."""
    where = [visible(caller)]
    for column, value in (
        (StudyRow.status, status),
        (SiteRow.name, site),
        (StudyRow.study_instance_uid, study_instance_uid),
        (StudyRow.patient_id, patient_id),
    ):
        if value is not None:
            where.append(column == value)
    wanted = select(StudyRow.id).join(SiteRow, StudyRow.site_id == SiteRow.id).where(*where)
    analyses = select(
        AnalysisRow.study_id, AnalysisRow.instance_id, AnalysisRow.flagged, AnalysisRow.headlines
    ).where(AnalysisRow.study_id.in_(wanted))
    latest: dict[int, dict[int, tuple[bool, list[str]]]] = {}
    for study_id, instance_id, flagged, headlines in session.execute(
        analyses.order_by(AnalysisRow.id)
    ):
        latest.setdefault(study_id, {})[instance_id] = (bool(flagged), list(headlines or ()))
    studies = _studies(wanted, now).where(*where)
    newest = studies.order_by(StudyRow.created_at.desc(), StudyRow.id.desc())
    return [_entry(found, latest.get(found[0], {})) for found in session.execute(newest)]


def _studies(wanted: Select[Any], now: datetime) -> Select[Any]:
    """The studies' columns with their counts: one grouped subquery per table, joined."""

    def grouped(study_id: Any, *columns: Any) -> Any:
        return (
            select(study_id.label("study_id"), *columns)
            .where(study_id.in_(wanted))
            .group_by(study_id)
            .subquery()
        )

    def tally(status: JobStatus) -> Any:
        return func.sum(case((JobRow.status == status, 1), else_=0))

    series = grouped(SeriesRow.study_id, func.count().label("n"))
    instances = grouped(InstanceRow.study_id, func.count().label("n"))
    jobs = grouped(
        JobRow.study_id,
        tally(JobStatus.FAILED).label("failed"),
        tally(JobStatus.DONE).label("done"),
    )
    reports = grouped(
        ReportRow.study_id, func.count().label("n"), func.max(ReportRow.version).label("last")
    )
    last = aliased(ReportRow)
    return (
        select(
            *(getattr(StudyRow, name) for name in _STUDY_COLUMNS),
            SiteRow.name.label("site"),
            func.coalesce(series.c.n, 0).label("series"),
            func.coalesce(instances.c.n, 0).label("instances"),
            func.coalesce(jobs.c.failed, 0).label("failed"),
            func.coalesce(jobs.c.done, 0).label("done"),
            func.coalesce(reports.c.n, 0).label("reports"),
            last.urgency.label("report_urgency"),
            ClaimRow.reviewer.label("claim_reviewer"),
            ClaimRow.claimed_at.label("claimed_at"),
            ClaimRow.expires_at.label("claim_expires_at"),
        )
        .join(SiteRow, StudyRow.site_id == SiteRow.id)
        .outerjoin(series, series.c.study_id == StudyRow.id)
        .outerjoin(instances, instances.c.study_id == StudyRow.id)
        .outerjoin(jobs, jobs.c.study_id == StudyRow.id)
        .outerjoin(reports, reports.c.study_id == StudyRow.id)
        .outerjoin(last, and_(last.study_id == StudyRow.id, last.version == reports.c.last))
        .outerjoin(ClaimRow, and_(ClaimRow.study_id == StudyRow.id, ClaimRow.expires_at > now))
    )


_STUDY_COLUMNS: Final = (
    "id",
    "study_instance_uid",
    "status",
    "reason",
    "created_at",
    "status_changed_at",
    "kinds",
    *STUDY_FIELDS,
)


def _entry(row: Sequence[Any], analyses: Mapping[int, tuple[bool, list[str]]]) -> WorklistEntry:
    """The entry of a row of :func:`_studies` (read by position: thousands of rows)."""
    _, uid, status, reason, created, changed, kinds = row[:7]
    header = row[7 : 7 + len(STUDY_FIELDS)]
    site, series, instances, failed, done, reports, report_urgency, *claim = row[
        7 + len(STUDY_FIELDS) :
    ]
    findings: tuple[str, ...] = ()
    flagged = False
    if analyses:
        ordered = sorted(analyses.values(), key=lambda a: not a[0])  # flagged analyses first
        flagged = ordered[0][0]
        findings = tuple(_unique(text for _, lines in ordered for text in lines))
    if reports:
        urgency: str | None = report_urgency
    elif flagged:
        urgency = "urgent"
    elif done or analyses:
        urgency = "routine"
    else:
        urgency = None
    holder, claimed_at, expires_at = claim
    return WorklistEntry(
        site=site,
        study_instance_uid=uid,
        status=status,
        reason=reason,
        created_at=created,
        status_changed_at=changed,
        series=int(series),
        instances=int(instances),
        kinds=tuple(_KINDS[k] for k in kinds or ()),
        **dict(zip(STUDY_FIELDS, header, strict=True)),
        urgency=urgency,
        findings=findings,
        claim=None if holder is None else ClaimRecord(uid, holder, claimed_at, expires_at),
        failed_jobs=int(failed),
        reports=int(reports),
    )


def claim_record(row: ClaimRow, study_instance_uid: str) -> ClaimRecord:
    """The record of a claim row."""
    return ClaimRecord(study_instance_uid, row.reviewer, row.claimed_at, row.expires_at)


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _says_flagged(item: Mapping[str, Any]) -> bool:
    return (
        item.get("abnormal") is True
        or item.get("urgent") is True
        or item.get("urgency") in _FLAG_URGENCIES
    )


def _recommendation_line(rec: Mapping[str, Any]) -> str:
    category = str(rec.get("category") or rec.get("rule") or "recommendation").replace("_", " ")
    evidence = _dicts(rec.get("evidence"))
    if not evidence:
        return category[:_LINE]
    quantity = evidence[0]
    name = str(quantity.get("meaning") or quantity.get("name") or "").strip()
    value = quantity.get("value")
    unit = str(quantity.get("unit") or "")
    shown = f"{value:.3g}" if isinstance(value, int | float) else str(value)
    measured = f"{name} {shown}{'' if unit in ('', '1') else ' ' + unit}".strip()
    return f"{measured}: {category}"[:_LINE]


def _first_clause(text: str) -> str:
    return text.split(";", 1)[0].strip().rstrip(".")[:_LINE]


def _unique(texts: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for text in texts:
        if text and text not in seen:
            seen.append(text)
        if len(seen) == MAX_HEADLINES:
            break
    return seen
