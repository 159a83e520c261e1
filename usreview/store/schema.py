"""The archive's tables (SQLAlchemy 2 ORM, typed), the same on SQLite and PostgreSQL.

::

    sites ─< studies ─< series ─< instances         (instances also name their site)
               └─< study_status_history
    sites ─< conflicts                              (envelopes kept aside for an admin)
    usreview_schema                                 (one row: the schema version)

A study keeps the header's description of the patient and the study (first non-empty
value of each field, :data:`usreview.store.records.STUDY_FIELDS`) and the union of its
instances' kinds; a series the equipment. The review's tables are in
:mod:`usreview.store.review_schema`. Times are stored as UTC without a zone and returned
as aware UTC datetimes.

:data:`SCHEMA_VERSION` numbers the tables as declared here and in the other schema
modules; it goes up with every change to them (``tests/test_store_schema_version.py``
fails until it does). An archive records the version it was last upgraded to
(:mod:`usreview.store.migrate`), and an older usreview refuses to change it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy import Enum as SAEnum
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from usreview.store.status import StudyStatus

__all__ = [
    "SCHEMA_VERSION",
    "Base",
    "ConflictRow",
    "InstanceRow",
    "SchemaVersionRow",
    "SeriesRow",
    "SiteRow",
    "StatusHistoryRow",
    "StudyRow",
    "UTCDateTime",
]

#: The version of the declared tables (see the module's doc).
SCHEMA_VERSION = 1


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored as naive UTC, read back as aware UTC."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware (UTC) datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def _status_type(name: str) -> SAEnum:
    return SAEnum(
        StudyStatus,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda enum: [member.value for member in enum],
    )


_UID = String(64)
_SHA = String(64)
_KEY = String(100)


class Base(DeclarativeBase):
    """Declarative base of the archive's tables."""


class SiteRow(Base):
    """A site that sends studies."""

    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StudyRow(Base):
    """A study of one site, with its current status."""

    __tablename__ = "studies"
    # A patient's other studies at the site (the study page's priors).
    __table_args__ = (Index("ix_studies_site_patient", "site_id", "patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(_UID, unique=True)
    status: Mapped[StudyStatus] = mapped_column(_status_type("study_status"), index=True)
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    kinds: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    patient_name: Mapped[str | None] = mapped_column(String(200))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_birth_date: Mapped[str | None] = mapped_column(String(10))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(10))
    study_time: Mapped[str | None] = mapped_column(String(15))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    referring_physician_name: Mapped[str | None] = mapped_column(String(200))


class SeriesRow(Base):
    """A series of a study."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(_UID, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(64))


class InstanceRow(Base):
    """A durably stored instance and the key of its envelope object."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(_UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(_UID)
    kinds: Mapped[list[str]] = mapped_column(JSON)
    plaintext_sha256: Mapped[str] = mapped_column(_SHA)
    size: Mapped[int] = mapped_column(BigInteger)
    envelope_sha256: Mapped[str] = mapped_column(_SHA)
    envelope_size: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(_KEY, index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class ConflictRow(Base):
    """An envelope kept aside because it conflicts with what is stored."""

    __tablename__ = "conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(_UID, index=True)
    study_instance_uid: Mapped[str] = mapped_column(_UID)
    series_instance_uid: Mapped[str] = mapped_column(_UID)
    sop_class_uid: Mapped[str] = mapped_column(_UID)
    kinds: Mapped[list[str]] = mapped_column(JSON)
    plaintext_sha256: Mapped[str] = mapped_column(_SHA)
    size: Mapped[int] = mapped_column(BigInteger)
    envelope_sha256: Mapped[str] = mapped_column(_SHA)
    object_key: Mapped[str] = mapped_column(_KEY, index=True)
    reason: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolution: Mapped[str | None] = mapped_column(Text)


class StatusHistoryRow(Base):
    """One status change of a study (``previous`` is null when the study was created)."""

    __tablename__ = "study_status_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    previous: Mapped[StudyStatus | None] = mapped_column(_status_type("history_previous"))
    status: Mapped[StudyStatus] = mapped_column(_status_type("history_status"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(128))


class SchemaVersionRow(Base):
    """The schema version the archive was last upgraded to, and by which usreview (one row)."""

    __tablename__ = "usreview_schema"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    written_by: Mapped[str] = mapped_column(String(32))
    upgraded_at: Mapped[datetime] = mapped_column(UTCDateTime())
