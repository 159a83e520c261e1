"""Queries and row-to-record conversion shared by the archive's operations.

Every listing goes through :func:`visible`, so a site only ever sees its own rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select, true

from usreview.dicom.enum import ImageKind
from usreview.store.records import (
    Caller,
    ConflictRecord,
    InstanceRecord,
    Reviewer,
    StudyRecord,
)
from usreview.store.schema import ConflictRow, InstanceRow, SeriesRow, SiteRow, StudyRow

__all__ = [
    "conflict_record",
    "instance_record",
    "instances_query",
    "studies_query",
    "study_record",
    "visible",
]


def visible(caller: Caller) -> ColumnElement[bool]:
    """The condition on ``SiteRow.name`` for the rows ``caller`` may see."""
    if isinstance(caller, Reviewer):
        if caller.sites is None:
            return true()
        return SiteRow.name.in_(sorted(caller.sites))
    if not isinstance(caller, str):
        raise TypeError("caller must be a site name or a Reviewer")
    return SiteRow.name == caller


def instances_query(caller: Caller) -> Select[InstanceRow, str, str, str]:
    """Instances visible to ``caller`` with their site, study and series UIDs."""
    return (
        select(
            InstanceRow,
            SiteRow.name,
            StudyRow.study_instance_uid,
            SeriesRow.series_instance_uid,
        )
        .join(SiteRow, InstanceRow.site_id == SiteRow.id)
        .join(StudyRow, InstanceRow.study_id == StudyRow.id)
        .join(SeriesRow, InstanceRow.series_id == SeriesRow.id)
        .where(visible(caller))
    )


def studies_query(caller: Caller) -> Select[StudyRow, str, int, int]:
    """Studies visible to ``caller`` with their site and series and instance counts."""
    series = (
        select(func.count(SeriesRow.id)).where(SeriesRow.study_id == StudyRow.id).scalar_subquery()
    )
    instances = (
        select(func.count(InstanceRow.id))
        .where(InstanceRow.study_id == StudyRow.id)
        .scalar_subquery()
    )
    return (
        select(StudyRow, SiteRow.name, series, instances)
        .join(SiteRow, StudyRow.site_id == SiteRow.id)
        .where(visible(caller))
    )


def instance_record(row: InstanceRow, site: str, study_uid: str, series_uid: str) -> InstanceRecord:
    """The record of an instance row."""
    return InstanceRecord(
        site=site,
        sop_instance_uid=row.sop_instance_uid,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_class_uid=row.sop_class_uid,
        kinds=_kinds(row.kinds),
        plaintext_sha256=row.plaintext_sha256,
        size=row.size,
        envelope_sha256=row.envelope_sha256,
        envelope_size=row.envelope_size,
        object_key=row.object_key,
        received_at=row.received_at,
    )


def study_record(row: StudyRow, site: str, series: int, instances: int) -> StudyRecord:
    """The record of a study row with its counts."""
    return StudyRecord(
        site=site,
        study_instance_uid=row.study_instance_uid,
        status=row.status,
        status_changed_at=row.status_changed_at,
        reason=row.reason,
        created_at=row.created_at,
        series=int(series),
        instances=int(instances),
    )


def conflict_record(row: ConflictRow, site: str) -> ConflictRecord:
    """The record of a conflict row."""
    return ConflictRecord(
        id=row.id,
        site=site,
        sop_instance_uid=row.sop_instance_uid,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        plaintext_sha256=row.plaintext_sha256,
        size=row.size,
        object_key=row.object_key,
        reason=row.reason,
        received_at=row.received_at,
        resolved_at=row.resolved_at,
        resolution=row.resolution,
    )


def _kinds(values: Sequence[Any]) -> tuple[ImageKind, ...]:
    return tuple(ImageKind(v) for v in values)
