"""The rows of one put: the check before its envelope is written, and its inserts.

:class:`~usreview.store.archive.Archive` stores an instance in the order its module doc
gives: :func:`check` (duplicate, conflict or new), the envelope written durably, then
:func:`insert_rows` in the transaction shared by concurrent puts. Both use SQLAlchemy
Core with statements built once: the ORM's bookkeeping, and compiling a statement, cost
more than running it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, bindparam, insert, select, update

from usreview.dicom.enum import ImageKind
from usreview.store.jobs_schema import JobRow, JobStatus
from usreview.store.objects import WrittenObject
from usreview.store.records import STUDY_FIELDS, InstanceMetadata, InstanceRecord, PutResult
from usreview.store.schema import InstanceRow, SeriesRow, SiteRow, StatusHistoryRow, StudyRow
from usreview.store.status import TRANSITIONS, StudyStatus

__all__ = ["Changed", "check", "insert_rows"]

_IN_USE = "a UID of this instance is already in use"
# The tables the put path writes with SQLAlchemy Core.
_SITES = cast(Table, SiteRow.__table__)
_STUDIES = cast(Table, StudyRow.__table__)
_SERIES = cast(Table, SeriesRow.__table__)
_INSTANCES = cast(Table, InstanceRow.__table__)
_HISTORY = cast(Table, StatusHistoryRow.__table__)
_JOBS = cast(Table, JobRow.__table__)
_FIND_INSTANCE = (
    select(
        _INSTANCES,
        _SITES.c.name.label("owner"),
        _STUDIES.c.study_instance_uid.label("study_uid"),
        _SERIES.c.series_instance_uid.label("series_uid"),
    )
    .join(_SITES, _INSTANCES.c.site_id == _SITES.c.id)
    .join(_STUDIES, _INSTANCES.c.study_id == _STUDIES.c.id)
    .join(_SERIES, _INSTANCES.c.series_id == _SERIES.c.id)
    .where(_INSTANCES.c.sop_instance_uid == bindparam("uid"))
)
_STUDY_OWNER = (
    select(_SITES.c.name)
    .select_from(_STUDIES)
    .join(_SITES, _STUDIES.c.site_id == _SITES.c.id)
    .where(_STUDIES.c.study_instance_uid == bindparam("uid"))
)
_SERIES_OWNER = (
    select(_STUDIES.c.study_instance_uid, _SITES.c.name)
    .select_from(_SERIES)
    .join(_STUDIES, _SERIES.c.study_id == _STUDIES.c.id)
    .join(_SITES, _STUDIES.c.site_id == _SITES.c.id)
    .where(_SERIES.c.series_instance_uid == bindparam("uid"))
)
_INSTANCE_ID = select(_INSTANCES.c.id).where(_INSTANCES.c.sop_instance_uid == bindparam("uid"))
_SITE_ID = select(_SITES.c.id).where(_SITES.c.name == bindparam("name"))
_STUDY = select(_STUDIES).where(_STUDIES.c.study_instance_uid == bindparam("uid"))
_SERIES_ROW = select(_SERIES).where(_SERIES.c.series_instance_uid == bindparam("uid"))
_UPDATE_STUDY = update(_STUDIES).where(_STUDIES.c.id == bindparam("row_id"))
_UPDATE_SERIES = update(_SERIES).where(_SERIES.c.id == bindparam("row_id"))
_INSERTS = {t.name: insert(t) for t in (_SITES, _STUDIES, _SERIES, _INSTANCES, _HISTORY, _JOBS)}


class Changed(Exception):
    """What was checked before writing changed before the commit: check again."""


def check(
    conn: Connection, site: str, meta: InstanceMetadata
) -> PutResult | tuple[str, str] | None:
    """Before writing: a duplicate's result, a conflict's (admin, site) reasons, or
    ``None`` to store."""
    found = conn.execute(_FIND_INSTANCE, {"uid": meta.sop_instance_uid}).one_or_none()
    if found is not None:
        if found.owner != site:
            return f"SOP Instance UID already stored by site {found.owner}", _IN_USE
        if found.plaintext_sha256 == meta.plaintext_sha256:
            record = InstanceRecord(
                site=found.owner,
                sop_instance_uid=found.sop_instance_uid,
                study_instance_uid=found.study_uid,
                series_instance_uid=found.series_uid,
                sop_class_uid=found.sop_class_uid,
                kinds=tuple(ImageKind(k) for k in found.kinds),
                plaintext_sha256=found.plaintext_sha256,
                size=found.size,
                envelope_sha256=found.envelope_sha256,
                envelope_size=found.envelope_size,
                object_key=found.object_key,
                received_at=found.received_at,
            )
            return PutResult(record, duplicate=True)
        reason = "different content under this SOP Instance UID"
        return reason, reason
    study = conn.execute(_STUDY_OWNER, {"uid": meta.study_instance_uid}).one_or_none()
    if study is not None and study.name != site:
        return f"Study Instance UID belongs to site {study.name}", _IN_USE
    series = conn.execute(_SERIES_OWNER, {"uid": meta.series_instance_uid}).one_or_none()
    if series is not None and series.study_instance_uid != meta.study_instance_uid:
        admin = f"Series Instance UID belongs to study {series.study_instance_uid}"
        if series.name != site:
            return f"{admin} of site {series.name}", _IN_USE
        return admin, "the series belongs to another study"
    return None


def _site_id(conn: Connection, name: str, now: datetime) -> int:
    """The id of the site ``name``, inserting its row if it is new."""
    found = conn.execute(_SITE_ID, {"name": name}).scalar_one_or_none()
    if found is not None:
        return int(found)
    return _insert_id(conn, _SITES, name=name, created_at=now)


def _insert_id(conn: Connection, table: Table, **values: Any) -> int:
    """INSERT one row of ``values`` into ``table``; its new primary key."""
    key = conn.execute(_INSERTS[table.name], values).inserted_primary_key
    assert key is not None
    return int(key[0])


def _described(row: Row[Any], meta: InstanceMetadata, fields: Iterable[str]) -> dict[str, Any]:
    """The header fields of ``meta`` that ``row`` lacks (a row keeps the first non-empty)."""
    return {
        name: value
        for name in fields
        if (value := getattr(meta, name)) is not None and getattr(row, name) is None
    }


def insert_rows(
    conn: Connection, site: str, meta: InstanceMetadata, written: WrittenObject, now: datetime
) -> PutResult:
    """Insert the rows of one put whose envelope is ``written``, with its processing job.

    What :func:`check` saw before the envelope was written must still hold, else
    :class:`Changed` (the put checks again).
    """
    if conn.execute(_INSTANCE_ID, {"uid": meta.sop_instance_uid}).first() is not None:
        raise Changed
    site_id = _site_id(conn, site, now)
    kinds = [k.value for k in meta.kinds]
    study = conn.execute(_STUDY, {"uid": meta.study_instance_uid}).one_or_none()
    if study is None:
        study_id = _insert_id(
            conn,
            _STUDIES,
            site_id=site_id,
            study_instance_uid=meta.study_instance_uid,
            status=StudyStatus.RECEIVED,
            status_changed_at=now,
            created_at=now,
            kinds=sorted(set(kinds)),
            **{name: getattr(meta, name) for name in STUDY_FIELDS},
        )
        _insert_id(
            conn,
            _HISTORY,
            study_id=study_id,
            previous=None,
            status=StudyStatus.RECEIVED,
            at=now,
        )
    else:
        if study.site_id != site_id:
            raise Changed
        study_id = study.id
        changes = _described(study, meta, STUDY_FIELDS)
        merged = sorted({*(study.kinds or ()), *kinds})
        if merged != study.kinds:
            changes["kinds"] = merged
        status: StudyStatus = study.status
        if status is not StudyStatus.RECEIVED and StudyStatus.RECEIVED in TRANSITIONS[status]:
            reason = "new instance"
            changes.update(status=StudyStatus.RECEIVED, status_changed_at=now, reason=reason)
            _insert_id(
                conn,
                _HISTORY,
                study_id=study_id,
                previous=status,
                status=StudyStatus.RECEIVED,
                at=now,
                reason=reason,
                actor=None,
            )
        if changes:
            conn.execute(_UPDATE_STUDY, {"row_id": study_id, **changes})
    series = conn.execute(_SERIES_ROW, {"uid": meta.series_instance_uid}).one_or_none()
    equipment = ("manufacturer", "model_name")
    if series is None:
        series_id = _insert_id(
            conn,
            _SERIES,
            study_id=study_id,
            series_instance_uid=meta.series_instance_uid,
            created_at=now,
            **{name: getattr(meta, name) for name in equipment},
        )
    else:
        if series.study_id != study_id:
            raise Changed
        series_id = series.id
        changes = _described(series, meta, equipment)
        if changes:
            conn.execute(_UPDATE_SERIES, {"row_id": series_id, **changes})
    instance_id = _insert_id(
        conn,
        _INSTANCES,
        site_id=site_id,
        study_id=study_id,
        series_id=series_id,
        sop_instance_uid=meta.sop_instance_uid,
        sop_class_uid=meta.sop_class_uid,
        kinds=kinds,
        plaintext_sha256=meta.plaintext_sha256,
        size=meta.size,
        envelope_sha256=written.sha256,
        envelope_size=written.size,
        object_key=written.key,
        received_at=now,
    )
    # Its processing job commits with it: a stored instance always has one.
    _insert_id(
        conn,
        _JOBS,
        instance_id=instance_id,
        study_id=study_id,
        status=JobStatus.PENDING,
        attempts=0,
        available_at=now,
        created_at=now,
    )
    record = InstanceRecord(
        site=site,
        sop_instance_uid=meta.sop_instance_uid,
        study_instance_uid=meta.study_instance_uid,
        series_instance_uid=meta.series_instance_uid,
        sop_class_uid=meta.sop_class_uid,
        kinds=tuple(ImageKind(k) for k in kinds),
        plaintext_sha256=meta.plaintext_sha256,
        size=meta.size,
        envelope_sha256=written.sha256,
        envelope_size=written.size,
        object_key=written.key,
        received_at=now,
    )
    return PutResult(record, duplicate=False)
