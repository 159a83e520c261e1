"""Tables of the processing queue (same declarative base as :mod:`usreview.store.schema`).

::

    instances ─── processing_jobs      (one job per stored instance, made in its commit)

A job is ``pending`` until a worker claims it (``running``, with a lease that the worker
renews), then ``done`` or, after its last attempt, ``failed`` with the reason. A claim
writes a new ``lease_token``: only the holder of the current token may renew, complete
or fail the job, so a worker whose lease expired cannot finish it a second time.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Enum as SAEnum
from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from usreview.store.schema import Base, UTCDateTime

__all__ = ["JobRow", "JobStatus"]


class JobStatus(StrEnum):
    """Where a processing job is."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobRow(Base):
    """The processing job of one stored instance."""

    __tablename__ = "processing_jobs"
    __table_args__ = (Index("ix_processing_jobs_claim", "status", "available_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    status: Mapped[JobStatus] = mapped_column(
        SAEnum(
            JobStatus,
            name="job_status",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda enum: [member.value for member in enum],
        )
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The processors of the last run, ``name=version`` separated by spaces (NULL: not
    #: recorded, a job done before the column existed or by a task that does not say).
    processors: Mapped[str | None] = mapped_column(Text)
