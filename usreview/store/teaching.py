"""Teaching cases in the archive: de-identified copies of published studies, for trainees.

>>> cases = TeachingStore(archive)                                  # doctest: +SKIP
>>> cases.case_of_study(Reviewer("dr-x"), study_uid)               # None until marked
>>> cases.add(Reviewer("dr-x"), study_uid, folder, case)           # doctest: +SKIP
>>> [c.case_uid for c in cases.cases()]                            # doctest: +SKIP

A case's files (made by :func:`usreview.teaching.deidentify`) are moved from the folder
given to :meth:`TeachingStore.add` into ``ROOT/teaching/CASE_UID/`` (mode 0700, files
0600) before its rows are committed; a failed commit removes them. One case per study:
marking a study again gives the case it has. Cases hold no link a trainee can follow to
the study: only :meth:`TeachingStore.case_of_study` (a reviewer who may see the study)
goes from a study to its case.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from usreview.store.archive import _guard
from usreview.store.database import writer
from usreview.store.errors import InvalidMetadataError, NotFoundError
from usreview.store.queries import visible
from usreview.store.records import Reviewer
from usreview.store.review_schema import TeachingCaseRow, TeachingInstanceRow
from usreview.store.schema import SiteRow, StudyRow

if TYPE_CHECKING:
    from usreview.store.archive import Archive

__all__ = ["TeachingCase", "TeachingInstance", "TeachingStore"]


@dataclass(frozen=True, slots=True)
class TeachingInstance:
    """One de-identified instance of a case (its new UIDs only)."""

    sop_instance_uid: str
    sop_class_uid: str
    kinds: tuple[str, ...]
    frames: int
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class TeachingCase:
    """A teaching case: the reviewer's cleaned words and the de-identified instances.

    ``refused`` says why each instance of the study left out was not copied.
    ``created_by`` and ``created_at`` are for administrators, never shown to trainees.
    """

    case_uid: str
    exam_type: str | None
    findings: str
    impression: str
    recommendations: str
    kinds: tuple[str, ...]
    refused: tuple[str, ...]
    instances: tuple[TeachingInstance, ...]
    created_by: str = ""
    created_at: datetime | None = None


class TeachingStore:
    """The teaching cases of an archive."""

    def __init__(self, archive: Archive) -> None:
        self._engine = archive._engine
        self._writer = writer(self._engine)
        self._clock = archive._clock
        self.root = archive.root / "teaching"

    def case_of_study(self, caller: Reviewer, study_instance_uid: str) -> TeachingCase | None:
        """The case made of a study visible to ``caller``, if any.

        Raises
        ------
        NotFoundError
            No such study for this reviewer.
        """
        with _guard("reading the teaching cases"), Session(self._engine) as session:
            study = self._study(session, caller, study_instance_uid)
            row = session.scalars(
                select(TeachingCaseRow).where(TeachingCaseRow.study_id == study.id)
            ).one_or_none()
            return None if row is None else _case(session, row)

    def add(
        self, caller: Reviewer, study_instance_uid: str, folder: Path, case: TeachingCase
    ) -> TeachingCase:
        """Record ``case`` of a study visible to ``caller``; its files are in ``folder``.

        ``folder`` holds ``SOP_INSTANCE_UID.dcm`` for each of ``case.instances`` and is
        moved into the archive. If the study has a case already, ``folder`` is removed
        and that case returned.

        Raises
        ------
        NotFoundError
            No such study for this reviewer.
        InvalidMetadataError
            A file of ``case.instances`` is missing from ``folder``.
        """
        for item in case.instances:
            if not (folder / f"{item.sop_instance_uid}.dcm").is_file():
                raise InvalidMetadataError(f"no file for {item.sop_instance_uid} in {folder}")
        target = self.root / case.case_uid
        with _guard("recording a teaching case"):
            self.root.mkdir(mode=0o700, exist_ok=True)
            os.rename(folder, target)
            try:
                self._insert(caller, study_instance_uid, case)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
        return self.case(case.case_uid)

    def _insert(self, caller: Reviewer, study_instance_uid: str, case: TeachingCase) -> None:
        with Session(self._writer) as session, session.begin():
            study = self._study(session, caller, study_instance_uid)
            row = TeachingCaseRow(
                case_uid=case.case_uid,
                study_id=study.id,
                created_by=caller.name,
                created_at=self._clock(),
                exam_type=case.exam_type,
                findings=case.findings,
                impression=case.impression,
                recommendations=case.recommendations,
                kinds=list(case.kinds),
                refused=list(case.refused),
            )
            session.add(row)
            session.flush()
            for item in case.instances:
                session.add(
                    TeachingInstanceRow(
                        case_id=row.id,
                        sop_instance_uid=item.sop_instance_uid,
                        sop_class_uid=item.sop_class_uid,
                        kinds=list(item.kinds),
                        frames=item.frames,
                        size=item.size,
                        sha256=item.sha256,
                    )
                )

    def cases(self) -> list[TeachingCase]:
        """Every teaching case, newest first."""
        with _guard("reading the teaching cases"), Session(self._engine) as session:
            rows = session.scalars(select(TeachingCaseRow).order_by(TeachingCaseRow.id.desc()))
            return [_case(session, row) for row in rows]

    def case(self, case_uid: str) -> TeachingCase:
        """One case.

        Raises
        ------
        NotFoundError
            No such case.
        """
        with _guard("reading the teaching cases"), Session(self._engine) as session:
            row = session.scalars(
                select(TeachingCaseRow).where(TeachingCaseRow.case_uid == case_uid)
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"no teaching case {case_uid}")
            return _case(session, row)

    def instance_file(self, case_uid: str, sop_instance_uid: str) -> tuple[TeachingInstance, Path]:
        """One de-identified instance of a case and its file.

        Raises
        ------
        NotFoundError
            No such case, or no such instance in it.
        """
        for item in self.case(case_uid).instances:
            if item.sop_instance_uid == sop_instance_uid:
                return item, self.root / case_uid / f"{sop_instance_uid}.dcm"
        raise NotFoundError(f"no instance {sop_instance_uid} in teaching case {case_uid}")

    def _study(self, session: Session, caller: Reviewer, uid: str) -> StudyRow:
        study = session.scalars(
            select(StudyRow)
            .join(SiteRow, StudyRow.site_id == SiteRow.id)
            .where(StudyRow.study_instance_uid == uid, visible(caller))
        ).one_or_none()
        if study is None:
            raise NotFoundError(f"no study {uid}")
        return study


def _case(session: Session, row: TeachingCaseRow) -> TeachingCase:
    rows: Sequence[TeachingInstanceRow] = session.scalars(
        select(TeachingInstanceRow)
        .where(TeachingInstanceRow.case_id == row.id)
        .order_by(TeachingInstanceRow.id)
    ).all()
    return TeachingCase(
        case_uid=row.case_uid,
        exam_type=row.exam_type,
        findings=row.findings,
        impression=row.impression,
        recommendations=row.recommendations,
        kinds=tuple(row.kinds),
        refused=tuple(row.refused),
        instances=tuple(
            TeachingInstance(
                i.sop_instance_uid, i.sop_class_uid, tuple(i.kinds), i.frames, i.size, i.sha256
            )
            for i in rows
        ),
        created_by=row.created_by,
        created_at=row.created_at,
    )
