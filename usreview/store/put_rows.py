"""The rows of puts: the check before an envelope is written, and the inserts.

:class:`~usreview.store.archive.Archive` stores an instance in the order its module doc
gives: :func:`check` (duplicate, conflict or new), the envelope written durably, then
:func:`insert_puts` in the transaction shared by concurrent puts, which holds the
index's write lock. So that it holds it briefly, that transaction runs a handful of
statements per batch rather than per put: every statement hands the GIL to the
process's other threads, and each hand-back can wait for a thread switch. Both use
SQLAlchemy Core with statements built once: the ORM's bookkeeping, and compiling a
statement, cost more than running it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Connection,
    Select,
    Table,
    bindparam,
    insert,
    literal,
    select,
    update,
)

from usreview.dicom.enum import ImageKind
from usreview.store.jobs_schema import JobRow, JobStatus
from usreview.store.objects import WrittenObject
from usreview.store.records import STUDY_FIELDS, InstanceMetadata, InstanceRecord, PutResult
from usreview.store.schema import InstanceRow, SeriesRow, SiteRow, StatusHistoryRow, StudyRow
from usreview.store.status import TRANSITIONS, StudyStatus

__all__ = ["Changed", "Put", "check", "insert_puts"]

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
    .where(_STUDIES.c.study_instance_uid == bindparam("study"))
)
_SERIES_OF = (
    select(_STUDIES.c.study_instance_uid, _SITES.c.name)
    .select_from(_SERIES)
    .join(_STUDIES, _SERIES.c.study_id == _STUDIES.c.id)
    .join(_SITES, _STUDIES.c.site_id == _SITES.c.id)
    .where(_SERIES.c.series_instance_uid == bindparam("series"))
)
# What check() needs to know of a new instance's UIDs, in one statement.
_UIDS_IN_USE = select(
    select(_INSTANCES.c.id)
    .where(_INSTANCES.c.sop_instance_uid == bindparam("uid"))
    .scalar_subquery()
    .label("instance"),
    _STUDY_OWNER.scalar_subquery().label("study_owner"),
    _SERIES_OF.with_only_columns(_STUDIES.c.study_instance_uid)
    .scalar_subquery()
    .label("series_study"),
    _SERIES_OF.with_only_columns(_SITES.c.name).scalar_subquery().label("series_owner"),
)
_UIDS: BindParameter[Any] = bindparam("uids", expanding=True)
_SITES_IN = select(_SITES.c.id, _SITES.c.name).where(
    _SITES.c.name.in_(bindparam("names", expanding=True))
)
_STUDIES_IN = select(_STUDIES).where(_STUDIES.c.study_instance_uid.in_(_UIDS))
_SERIES_IN = select(_SERIES).where(_SERIES.c.series_instance_uid.in_(_UIDS))
_NOW = bindparam("now", type_=_JOBS.c.created_at.type)
_JOBS_FOR = insert(_JOBS).from_select(
    ["instance_id", "study_id", "status", "attempts", "available_at", "created_at"],
    select(
        _INSTANCES.c.id,
        _INSTANCES.c.study_id,
        literal(JobStatus.PENDING, _JOBS.c.status.type),
        literal(0),
        _NOW,
        _NOW,
    )
    .where(_INSTANCES.c.sop_instance_uid.in_(_UIDS))
    .order_by(_INSTANCES.c.id),
)
_UPDATE_STUDY = update(_STUDIES).where(_STUDIES.c.id == bindparam("row_id"))
_UPDATE_SERIES = update(_SERIES).where(_SERIES.c.id == bindparam("row_id"))
_INSERTS = {t.name: insert(t) for t in (_SITES, _STUDIES, _SERIES, _INSTANCES, _HISTORY)}
_EQUIPMENT = ("manufacturer", "model_name")
#: One put: the sending site, the instance's metadata, its envelope as written.
Put = tuple[str, InstanceMetadata, WrittenObject]


class Changed(Exception):
    """What was checked before writing changed before the commit: check again."""


def check(
    conn: Connection, site: str, meta: InstanceMetadata
) -> PutResult | tuple[str, str] | None:
    """Before writing: a duplicate's result, a conflict's (admin, site) reasons, or
    ``None`` to store."""
    uids = {
        "uid": meta.sop_instance_uid,
        "study": meta.study_instance_uid,
        "series": meta.series_instance_uid,
    }
    in_use = conn.execute(_UIDS_IN_USE, uids).one()
    found = None
    if in_use.instance is not None:
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
    if in_use.study_owner is not None and in_use.study_owner != site:
        return f"Study Instance UID belongs to site {in_use.study_owner}", _IN_USE
    series_study = in_use.series_study
    if series_study is not None and series_study != meta.study_instance_uid:
        admin = f"Series Instance UID belongs to study {series_study}"
        if in_use.series_owner != site:
            return f"{admin} of site {in_use.series_owner}", _IN_USE
        return admin, "the series belongs to another study"
    return None


def _insert_id(conn: Connection, table: Table, **values: Any) -> int:
    """INSERT one row of ``values`` into ``table``; its new primary key."""
    key = conn.execute(_INSERTS[table.name], values).inserted_primary_key
    assert key is not None
    return int(key[0])


def _described(
    row: Mapping[str, Any], meta: InstanceMetadata, fields: Iterable[str]
) -> dict[str, Any]:
    """The header fields of ``meta`` that ``row`` lacks (a row keeps the first non-empty)."""
    return {
        name: value
        for name in fields
        if (value := getattr(meta, name)) is not None and row[name] is None
    }


def _by(
    conn: Connection, statement: Select[Any], key: str, values: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """The rows ``statement`` finds for ``values`` (its ``uids``), as dicts keyed by ``key``."""
    rows = conn.execute(statement, {"uids": sorted(set(values))}).mappings()
    return {row[key]: dict(row) for row in rows}


def insert_puts(
    conn: Connection, puts: Sequence[Put], now: datetime, site_ids: dict[str, int]
) -> list[PutResult | Changed]:
    """Insert the rows of ``puts`` (written envelopes), each with its processing job.

    A put whose UIDs are no longer as :func:`check` saw them (its study now another
    site's, its series another study's, its instance in this batch already) gets
    :class:`Changed` (it checks again) and nothing of it is written; an instance
    stored by another transaction since makes the insert fail on the UID's uniqueness
    (``IntegrityError``: the caller inserts put by put). The statements are per batch,
    not per put: the batch's studies and series (and its sites not cached yet) looked
    up, the two bulk inserts, and a row for each new site, study or series (and an
    update where a put adds to one), so that the write lock is held briefly however
    many puts share the transaction. ``site_ids`` caches the ids of
    committed sites (their rows are never removed): names it lacks are looked up and
    added; a site inserted here is not added, its row is not committed yet.
    """
    missing = sorted({site for site, _, _ in puts} - site_ids.keys())
    if missing:
        site_ids.update((row.name, row.id) for row in conn.execute(_SITES_IN, {"names": missing}))
    sites = dict(site_ids)  # and the sites inserted below
    taken: set[str] = set()
    studies = _by(
        conn, _STUDIES_IN, "study_instance_uid", (m.study_instance_uid for _, m, _ in puts)
    )
    series = _by(
        conn, _SERIES_IN, "series_instance_uid", (m.series_instance_uid for _, m, _ in puts)
    )
    outcomes: list[PutResult | Changed] = []
    rows: list[dict[str, Any]] = []
    for site, meta, written in puts:
        study = studies.get(meta.study_instance_uid)
        found = series.get(meta.series_instance_uid)
        site_id = sites.get(site)
        if (
            meta.sop_instance_uid in taken
            or (study is not None and study["site_id"] != site_id)
            or (found is not None and (study is None or found["study_id"] != study["id"]))
        ):
            outcomes.append(Changed())
            continue
        if site_id is None:
            site_id = sites[site] = _insert_id(conn, _SITES, name=site, created_at=now)
        kinds = [k.value for k in meta.kinds]
        if study is None:
            study = studies[meta.study_instance_uid] = _new_study(conn, site_id, meta, kinds, now)
        else:
            _add_to_study(conn, study, meta, kinds, now)
        if found is None:
            values = {name: getattr(meta, name) for name in _EQUIPMENT}
            found = series[meta.series_instance_uid] = dict(
                study_id=study["id"], series_instance_uid=meta.series_instance_uid, **values
            )
            found["id"] = _insert_id(conn, _SERIES, created_at=now, **found)
        elif changes := _described(found, meta, _EQUIPMENT):
            conn.execute(_UPDATE_SERIES, {"row_id": found["id"], **changes})
            found.update(changes)
        taken.add(meta.sop_instance_uid)
        record = InstanceRecord(
            site=site,
            sop_instance_uid=meta.sop_instance_uid,
            study_instance_uid=meta.study_instance_uid,
            series_instance_uid=meta.series_instance_uid,
            sop_class_uid=meta.sop_class_uid,
            kinds=meta.kinds,
            plaintext_sha256=meta.plaintext_sha256,
            size=meta.size,
            envelope_sha256=written.sha256,
            envelope_size=written.size,
            object_key=written.key,
            received_at=now,
        )
        rows.append(
            {
                "site_id": site_id,
                "study_id": study["id"],
                "series_id": found["id"],
                "sop_instance_uid": record.sop_instance_uid,
                "sop_class_uid": record.sop_class_uid,
                "kinds": kinds,
                "plaintext_sha256": record.plaintext_sha256,
                "size": record.size,
                "envelope_sha256": record.envelope_sha256,
                "envelope_size": record.envelope_size,
                "object_key": record.object_key,
                "received_at": now,
            }
        )
        outcomes.append(PutResult(record, duplicate=False))
    if rows:
        conn.execute(_INSERTS[_INSTANCES.name], rows)  # executemany: one compiled statement
        # Their processing jobs commit with them: a stored instance always has one.
        conn.execute(_JOBS_FOR, {"uids": [row["sop_instance_uid"] for row in rows], "now": now})
    return outcomes


def _new_study(
    conn: Connection, site_id: int, meta: InstanceMetadata, kinds: list[str], now: datetime
) -> dict[str, Any]:
    """Insert the study of ``meta`` with its first status; its row as a dict."""
    study = {
        "site_id": site_id,
        "study_instance_uid": meta.study_instance_uid,
        "status": StudyStatus.RECEIVED,
        "status_changed_at": now,
        "created_at": now,
        "kinds": sorted(set(kinds)),
        **{name: getattr(meta, name) for name in STUDY_FIELDS},
    }
    study["id"] = _insert_id(conn, _STUDIES, **study)
    _insert_id(
        conn, _HISTORY, study_id=study["id"], previous=None, status=StudyStatus.RECEIVED, at=now
    )
    return study


def _add_to_study(
    conn: Connection, study: dict[str, Any], meta: InstanceMetadata, kinds: list[str], now: datetime
) -> None:
    """Update ``study`` (the row and the dict) for a new instance: header fields it
    lacked, its kinds, and back to received if it had moved on."""
    changes = _described(study, meta, STUDY_FIELDS)
    merged = sorted({*(study["kinds"] or ()), *kinds})
    if merged != study["kinds"]:
        changes["kinds"] = merged
    status: StudyStatus = study["status"]
    if status is not StudyStatus.RECEIVED and StudyStatus.RECEIVED in TRANSITIONS[status]:
        reason = "new instance"
        changes.update(status=StudyStatus.RECEIVED, status_changed_at=now, reason=reason)
        _insert_id(
            conn,
            _HISTORY,
            study_id=study["id"],
            previous=status,
            status=StudyStatus.RECEIVED,
            at=now,
            reason=reason,
            actor=None,
        )
    if changes:
        conn.execute(_UPDATE_STUDY, {"row_id": study["id"], **changes})
        study.update(changes)
