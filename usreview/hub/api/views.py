"""JSON views of the archive's records (the records stay the truth)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from usreview.store import InstanceRecord, ResultRecord, StudyRecord

__all__ = ["instance_view", "iso", "result_view", "study_view"]


def iso(moment: datetime) -> str:
    """``moment`` as ISO 8601 UTC text ending in ``Z``."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def study_view(study: StudyRecord) -> dict[str, Any]:
    """The ``Study`` schema."""
    return {
        "study_instance_uid": study.study_instance_uid,
        "site": study.site,
        "status": study.status.value,
        "reason": study.reason,
        "series": study.series,
        "instances": study.instances,
        "received_at": iso(study.created_at),
        "updated_at": iso(study.status_changed_at),
    }


def instance_view(record: InstanceRecord) -> dict[str, Any]:
    """One instance of a study."""
    return {
        "sop_instance_uid": record.sop_instance_uid,
        "sop_class_uid": record.sop_class_uid,
        "kinds": [k.value for k in record.kinds],
        "size": record.size,
        "plaintext_sha256": record.plaintext_sha256,
        "received_at": iso(record.received_at),
    }


def result_view(record: ResultRecord) -> dict[str, Any]:
    """The ``ResultItem`` schema."""
    return {
        "id": record.cursor,
        "cursor": record.cursor,
        "study_instance_uid": record.study_instance_uid,
        "kind": record.kind,
        "label": record.label,
        "supersedes": record.supersedes,
        "size": record.envelope_size,
        "sha256": record.envelope_sha256,
        "published_at": iso(record.published_at),
    }
