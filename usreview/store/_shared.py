"""Helpers the archive's stores share (archive, results, jobs, review, teaching).

:func:`guard` turns disk and database failures into :class:`StorageError`;
:func:`envelope_source` checks an envelope argument; :func:`site_row` and
:func:`change_status` write the rows every store writes the same way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from usreview.store.errors import InvalidMetadataError, StorageError
from usreview.store.schema import SiteRow, StatusHistoryRow, StudyRow
from usreview.store.status import StudyStatus

__all__ = ["change_status", "envelope_source", "guard", "site_row"]


@contextlib.contextmanager
def guard(action: str, *, acknowledged: bool | None = None) -> Iterator[None]:
    """Turn disk and database failures into :class:`StorageError` naming ``action``."""
    tail = "; nothing was acknowledged, send again" if acknowledged is False else ""
    try:
        yield
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise StorageError(f"{action}: the archive's database failed ({first}){tail}") from exc
    except OSError as exc:
        detail = exc.strerror or str(exc)
        raise StorageError(f"{action}: the archive's disk failed ({detail}){tail}") from exc


def envelope_source(envelope: str | os.PathLike[str] | bytes) -> Path | bytes:
    """The envelope as bytes, or the path of an existing file."""
    if isinstance(envelope, bytes | bytearray | memoryview):
        return bytes(envelope)
    path = Path(envelope)
    if not path.is_file():
        raise InvalidMetadataError(f"envelope: no such file {path}")
    return path


def site_row(session: Session, name: str, now: datetime) -> SiteRow:
    """The row of site ``name``, added if it is new."""
    row = session.scalars(select(SiteRow).where(SiteRow.name == name)).one_or_none()
    if row is None:
        row = SiteRow(name=name, created_at=now)
        session.add(row)
        session.flush()
    return row


def change_status(
    session: Session,
    study: StudyRow,
    status: StudyStatus,
    now: datetime,
    reason: str | None,
    actor: str | None,
) -> None:
    """Move ``study`` to ``status`` (checked by the caller) and record it in its history."""
    session.add(
        StatusHistoryRow(
            study_id=study.id,
            previous=study.status,
            status=status,
            at=now,
            reason=reason,
            actor=actor,
        )
    )
    study.status = status
    study.status_changed_at = now
    study.reason = reason
    session.flush()
