"""Tables of the results feed (same declarative base as :mod:`usreview.store.schema`).

::

    results ─< result_sites >─ sites       (a result addressed to one or more sites)
       ├── supersedes -> results.id        (the earlier result this one replaces)
       ├── superseded_by -> results.id     (set on the earlier one in the same commit)
       └── result_keys                     (optional idempotency key, unique)

``results.id`` is the feed's cursor: it only grows (SQLite ``AUTOINCREMENT``; on
PostgreSQL publishing locks the table so that ids commit in order).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from usreview.store.schema import Base, UTCDateTime

__all__ = ["ResultKeyRow", "ResultRow", "ResultSiteRow"]


class ResultRow(Base):
    """A sealed result for sites; its id is the feed cursor."""

    __tablename__ = "results"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(Text)
    supersedes: Mapped[int | None] = mapped_column(ForeignKey("results.id"))
    #: The newer result that replaced this one (added to existing archives when opened).
    superseded_by: Mapped[int | None] = mapped_column(Integer)
    object_key: Mapped[str] = mapped_column(String(100))
    envelope_sha256: Mapped[str] = mapped_column(String(64))
    envelope_size: Mapped[int] = mapped_column(BigInteger)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ResultSiteRow(Base):
    """One addressee of a result."""

    __tablename__ = "result_sites"
    __table_args__ = (Index("ix_result_sites_site_result", "site_id", "result_id"),)

    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), primary_key=True)


class ResultKeyRow(Base):
    """The idempotency key of a result: publishing under a known key returns that result."""

    __tablename__ = "result_keys"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), unique=True)
