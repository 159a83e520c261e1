"""Tables of the review (same declarative base as :mod:`usreview.store.schema`).

::

    instances ─< analyses        (automatic results' JSON, one per processor signature)
    studies ─── study_claims     (at most one claim per study: who reviews it, until when)
    studies ─< reports           (published report versions; never changed once written)
    reviewer_sites               (the sites a reviewer is restricted to; no row: every site)
    studies ─< teaching_cases ─< teaching_instances
                                 (de-identified copies of a published study for trainees)

An analysis keeps, besides the JSON, what the worklist shows of it (``flagged``,
``headlines``), so that listing thousands of studies reads no JSON document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import Mapped, mapped_column

from usreview.store.schema import Base, UTCDateTime

__all__ = [
    "AnalysisRow",
    "ClaimRow",
    "ReportRow",
    "ReviewerSitesRow",
    "TeachingCaseRow",
    "TeachingInstanceRow",
]


class AnalysisRow(Base):
    """The automatic results of one instance by one set of processor versions."""

    __tablename__ = "analyses"
    __table_args__ = (UniqueConstraint("instance_id", "signature"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    signature: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    flagged: Mapped[bool] = mapped_column(Boolean)
    headlines: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ClaimRow(Base):
    """A reviewer's claim on a study (expired claims are free to take)."""

    __tablename__ = "study_claims"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    reviewer: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReportRow(Base):
    """One published version of a study's report."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("study_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    reviewer: Mapped[str] = mapped_column(String(128))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime())
    urgency: Mapped[str] = mapped_column(String(16))
    recipients: Mapped[list[str]] = mapped_column(JSON)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    results: Mapped[dict[str, Any]] = mapped_column(JSON)
    supersedes: Mapped[int | None] = mapped_column(Integer)
    content: Mapped[dict[str, Any]] = mapped_column(JSON)


class ReviewerSitesRow(Base):
    """The sites one reviewer may read (a reviewer without a row reads every site)."""

    __tablename__ = "reviewer_sites"

    reviewer: Mapped[str] = mapped_column(String(128), primary_key=True)
    sites: Mapped[list[str]] = mapped_column(JSON)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    changed_by: Mapped[str] = mapped_column(String(128))


class TeachingCaseRow(Base):
    """A published study made into a teaching case (one per study).

    ``case_uid`` is the de-identified copies' Study Instance UID; the text fields are the
    reviewer's, cleaned of the patient's identifiers and of dates.
    """

    __tablename__ = "teaching_cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    exam_type: Mapped[str | None] = mapped_column(String(32))
    findings: Mapped[str] = mapped_column(Text)
    impression: Mapped[str] = mapped_column(Text)
    recommendations: Mapped[str] = mapped_column(Text)
    kinds: Mapped[list[str]] = mapped_column(JSON)
    refused: Mapped[list[str]] = mapped_column(JSON)
    #: The expert's measurements (name, value, unit, label...), no source UID; ``None``
    #: in cases made before they were kept.
    measurements: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)


class TeachingInstanceRow(Base):
    """One de-identified instance of a teaching case (a file under the archive's root)."""

    __tablename__ = "teaching_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("teaching_cases.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    kinds: Mapped[list[str]] = mapped_column(JSON)
    frames: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    #: What the case library compares it by (:mod:`usreview.processing.similarity`: kind,
    #: version, vector); filled in by the processing worker.
    descriptor: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


@event.listens_for(ReportRow, "before_update")
def _never_changed(mapper: Any, connection: Any, target: ReportRow) -> None:
    raise ValueError(f"report version {target.version} is published: it is never changed")
