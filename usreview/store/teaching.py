"""Teaching cases in the archive: de-identified copies of published studies, for trainees.

>>> cases = TeachingStore(archive, key)                                # doctest: +SKIP
>>> cases.case_of_study(Reviewer("dr-x"), study_uid)               # None until marked
>>> cases.add(Reviewer("dr-x"), study_uid, folder, case)           # doctest: +SKIP
>>> [c.case_uid for c in cases.cases()]                            # doctest: +SKIP

A case's files (made by :func:`usreview.teaching.deidentify`) are encrypted at rest with
the hub's at-rest key (AES-256-GCM) into ``ROOT/teaching/CASE_UID/SOP_UID.sealed``
(folder 0700, files 0600), each written durably (temp file, fsync, rename, directory
fsync: :func:`usreview.envelope.atomic.write_new_file`), and the plaintext folder is
removed; only then are its rows committed, and a failed commit removes the files. A crash
between the two leaves a folder without rows: :func:`remove_orphan_cases` moves those to
``ROOT/teaching/orphans/`` (never deleting them: after an index restored older than the
files, they are cases that were recorded) when the service starts. A sealed file is::

    magic   8  b"USRTCH1\0"
    nonce  12  random
    sealed     AES-256-GCM of the DICOM bytes (16-byte tag at the end)

with the magic, the case UID, the SOP Instance UID and the plaintext's SHA-256 as
associated data, so a file cannot be altered or passed off as another instance.
:meth:`TeachingStore.read_instance` opens it and checks the SHA-256 recorded with it.
One case per study: marking a study again gives the case it has; a case can be withdrawn
(:meth:`TeachingStore.remove`), its rows then its files. Cases hold no link a
trainee can follow to the study: only :meth:`TeachingStore.case_of_study` (a reviewer who
may see the study) goes from a study to its case.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import secrets
import shutil
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from usreview.envelope.atomic import fsync_directory, write_new_file
from usreview.store._shared import guard
from usreview.store.database import writer
from usreview.store.errors import CorruptObjectError, InvalidMetadataError, NotFoundError
from usreview.store.objects import ORPHANS, move_durably
from usreview.store.queries import visible
from usreview.store.records import Reviewer
from usreview.store.review_schema import TeachingCaseRow, TeachingInstanceRow
from usreview.store.schema import SiteRow, StudyRow

if TYPE_CHECKING:
    from usreview.store.archive import Archive

__all__ = [
    "MAGIC",
    "LibraryItem",
    "TeachingCase",
    "TeachingInstance",
    "TeachingStore",
    "remove_orphan_cases",
]

#: The first bytes of a teaching copy encrypted at rest.
MAGIC = b"USRTCH1\0"
_NONCE = 12
_TAG = 16


@dataclass(frozen=True, slots=True)
class LibraryItem:
    """A de-identified instance as the case library compares it (:meth:`TeachingStore.library`).

    ``study_instance_uid`` is the source study's, for the hub's own use (an instance is not
    compared with the case made of its own study); it never leaves the hub. Descriptors
    are read apart (:meth:`TeachingStore.descriptors`): they are large and rarely change.
    """

    case_uid: str
    sop_instance_uid: str
    study_instance_uid: str


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
    measurements: tuple[Mapping[str, Any], ...] = ()
    """The expert's measurements from the report (name, value, unit, origin, decision and
    the cleaned label; never the source instance's UID)."""
    created_by: str = ""
    created_at: datetime | None = None


class TeachingStore:
    """The teaching cases of an archive, their copies encrypted with ``key``.

    Parameters
    ----------
    archive
        The archive holding the cases.
    key
        The hub's at-rest key: 32 bytes.
    """

    def __init__(self, archive: Archive, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != 32:
            raise InvalidMetadataError("the at-rest key of teaching copies is 32 bytes")
        self._engine = archive._engine
        self._writer = writer(self._engine)
        self._clock = archive._clock
        self._aead = AESGCM(key)
        self.root = archive.root / "teaching"

    def case_of_study(self, caller: Reviewer, study_instance_uid: str) -> TeachingCase | None:
        """The case made of a study visible to ``caller``, if any.

        Raises
        ------
        NotFoundError
            No such study for this reviewer.
        """
        with guard("reading the teaching cases"), Session(self._engine) as session:
            study = self._study(session, caller, study_instance_uid)
            row = session.scalars(
                select(TeachingCaseRow).where(TeachingCaseRow.study_id == study.id)
            ).one_or_none()
            return None if row is None else _case(session, row)

    def add(
        self, caller: Reviewer, study_instance_uid: str, folder: Path, case: TeachingCase
    ) -> TeachingCase:
        """Record ``case`` of a study visible to ``caller``; its files are in ``folder``.

        ``folder`` holds ``SOP_INSTANCE_UID.dcm`` for each of ``case.instances``; each is
        encrypted into the archive (see the module docstring), then ``folder`` is removed.
        A case another process recorded for the study meanwhile wins: ``case``'s files are
        removed and that case is returned (compare its ``case_uid``).

        Raises
        ------
        NotFoundError
            No such study for this reviewer.
        InvalidMetadataError
            A file of ``case.instances`` is missing from ``folder`` or is not the one
            described (size or SHA-256).
        """
        target = self.root / case.case_uid
        with guard("recording a teaching case"):
            if not self.root.is_dir():
                self.root.mkdir(mode=0o700, exist_ok=True)
                fsync_directory(self.root.parent)
            target.mkdir(mode=0o700)
            fsync_directory(self.root)
            try:
                for item in case.instances:
                    sealed = self._seal(case.case_uid, item, _plaintext(folder, item))
                    write_new_file(target / f"{item.sop_instance_uid}.sealed", sealed)
                shutil.rmtree(folder, ignore_errors=True)
                self._insert(caller, study_instance_uid, case)
            except BaseException as exc:
                shutil.rmtree(target, ignore_errors=True)
                with contextlib.suppress(OSError):
                    fsync_directory(self.root)
                if isinstance(exc, IntegrityError):  # one case per study: another won
                    known = self.case_of_study(caller, study_instance_uid)
                    if known is not None and known.case_uid != case.case_uid:
                        return known
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
                measurements=[dict(m) for m in case.measurements],
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

    def set_text(
        self,
        caller: Reviewer,
        study_instance_uid: str,
        *,
        exam_type: str | None,
        findings: str,
        impression: str,
        recommendations: str,
        measurements: Sequence[Mapping[str, Any]] = (),
    ) -> TeachingCase:
        """Replace the words and measurements of the case made of a study (an amended
        report's, cleaned).

        Raises
        ------
        NotFoundError
            No such study for this reviewer, or no case of it.
        """
        with guard("updating a teaching case"), Session(self._writer) as session:
            with session.begin():
                study = self._study(session, caller, study_instance_uid)
                row = session.scalars(
                    select(TeachingCaseRow).where(TeachingCaseRow.study_id == study.id)
                ).one_or_none()
                if row is None:
                    raise NotFoundError(f"no teaching case of study {study_instance_uid}")
                row.exam_type, row.findings = exam_type, findings
                row.impression, row.recommendations = impression, recommendations
                row.measurements = [dict(m) for m in measurements]
            return _case(session, row)

    def remove(self, caller: Reviewer, case_uid: str) -> TeachingCase:
        """Withdraw a case (burned-in text found in its images, say); the case it was.

        Its rows go in one transaction, then its files; a crash between the two leaves a
        folder without rows, which :func:`remove_orphan_cases` moves aside at the next start.
        Trainees and the case library no longer see it from the commit on.

        Raises
        ------
        NotFoundError
            No such case, or its study is not visible to ``caller``.
        """
        with (
            guard("withdrawing a teaching case"),
            Session(self._writer) as session,
            session.begin(),
        ):
            row = session.scalars(
                select(TeachingCaseRow)
                .join(StudyRow, StudyRow.id == TeachingCaseRow.study_id)
                .join(SiteRow, StudyRow.site_id == SiteRow.id)
                .where(TeachingCaseRow.case_uid == case_uid, visible(caller))
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"no teaching case {case_uid}")
            case = _case(session, row)
            session.execute(
                delete(TeachingInstanceRow).where(TeachingInstanceRow.case_id == row.id)
            )
            session.delete(row)
        with guard("removing a withdrawn teaching case's files"):
            folder = self.root / case_uid
            if folder.is_dir():
                shutil.rmtree(folder)
                fsync_directory(self.root)
        return case

    def cases(self) -> list[TeachingCase]:
        """Every teaching case, newest first."""
        with guard("reading the teaching cases"), Session(self._engine) as session:
            rows = session.scalars(select(TeachingCaseRow).order_by(TeachingCaseRow.id.desc()))
            return [_case(session, row) for row in rows]

    def case(self, case_uid: str) -> TeachingCase:
        """One case.

        Raises
        ------
        NotFoundError
            No such case.
        """
        with guard("reading the teaching cases"), Session(self._engine) as session:
            row = session.scalars(
                select(TeachingCaseRow).where(TeachingCaseRow.case_uid == case_uid)
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"no teaching case {case_uid}")
            return _case(session, row)

    def library(self) -> list[LibraryItem]:
        """Every de-identified instance (without descriptors), oldest case first."""
        with guard("reading the case library"), Session(self._engine) as session:
            rows = session.execute(
                select(
                    TeachingCaseRow.case_uid,
                    TeachingInstanceRow.sop_instance_uid,
                    StudyRow.study_instance_uid,
                )
                .join(TeachingInstanceRow, TeachingInstanceRow.case_id == TeachingCaseRow.id)
                .join(StudyRow, StudyRow.id == TeachingCaseRow.study_id)
                .order_by(TeachingCaseRow.id, TeachingInstanceRow.id)
            )
            return [LibraryItem(*row) for row in rows]

    def library_mark(self) -> tuple[int, int]:
        """How many de-identified instances there are and the newest one's id: a new or
        removed case changes it (one small query, for readers that keep the library)."""
        with guard("reading the case library"), Session(self._engine) as session:
            count, newest = session.execute(
                select(func.count(TeachingInstanceRow.id), func.max(TeachingInstanceRow.id))
            ).one()
            return int(count), int(newest or 0)

    def descriptors(self, sop_instance_uids: Collection[str]) -> dict[str, Mapping[str, Any]]:
        """The descriptors recorded for these instances (those without one are left out).

        A record may instead be the case library's marker of an instance that is not
        compared (:mod:`usreview.processing.case_library`).
        """
        found: dict[str, Mapping[str, Any]] = {}
        wanted = list(sop_instance_uids)
        with guard("reading the case library"), Session(self._engine) as session:
            for start in range(0, len(wanted), 500):
                rows = session.execute(
                    select(TeachingInstanceRow.sop_instance_uid, TeachingInstanceRow.descriptor)
                    .where(TeachingInstanceRow.sop_instance_uid.in_(wanted[start : start + 500]))
                    .where(TeachingInstanceRow.descriptor.is_not(None))
                )
                found.update((uid, descriptor) for uid, descriptor in rows)
        return found

    def set_descriptor(self, sop_instance_uid: str, descriptor: Mapping[str, Any]) -> None:
        """Record the descriptor (or marker) of a de-identified instance (:meth:`descriptors`
        gives it)."""
        engine = writer(self._engine)
        with guard("recording a descriptor"), Session(engine) as session, session.begin():
            session.execute(
                update(TeachingInstanceRow)
                .where(TeachingInstanceRow.sop_instance_uid == sop_instance_uid)
                .values(descriptor=dict(descriptor))
            )

    def read_instance(self, case_uid: str, sop_instance_uid: str) -> tuple[TeachingInstance, bytes]:
        """One de-identified instance of a case and its DICOM bytes (decrypted, checked).

        Raises
        ------
        NotFoundError
            No such case, or no such instance in it.
        CorruptObjectError
            Its file is missing, altered, or does not open with the at-rest key.
        """
        for item in self.case(case_uid).instances:
            if item.sop_instance_uid == sop_instance_uid:
                path = self.root / case_uid / f"{sop_instance_uid}.sealed"
                with guard("reading a teaching copy"):
                    stored = path.read_bytes() if path.is_file() else b""
                return item, self._open(case_uid, item, stored)
        raise NotFoundError(f"no instance {sop_instance_uid} in teaching case {case_uid}")

    def _seal(self, case_uid: str, item: TeachingInstance, data: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, _aad(case_uid, item))

    def _open(self, case_uid: str, item: TeachingInstance, stored: bytes) -> bytes:
        head = len(MAGIC) + _NONCE
        data = b""
        if stored[: len(MAGIC)] == MAGIC and len(stored) >= head + _TAG:
            nonce, sealed = stored[len(MAGIC) : head], stored[head:]
            with contextlib.suppress(InvalidTag):
                data = self._aead.decrypt(nonce, sealed, _aad(case_uid, item))
        if not data or hashlib.sha256(data).hexdigest() != item.sha256:
            raise CorruptObjectError(
                f"the teaching copy {item.sop_instance_uid} is missing, has changed, or does "
                "not open with the at-rest key; tell an administrator"
            )
        return data

    def _study(self, session: Session, caller: Reviewer, uid: str) -> StudyRow:
        study = session.scalars(
            select(StudyRow)
            .join(SiteRow, StudyRow.site_id == SiteRow.id)
            .where(StudyRow.study_instance_uid == uid, visible(caller))
        ).one_or_none()
        if study is None:
            raise NotFoundError(f"no study {uid}")
        return study


def remove_orphan_cases(archive: Archive) -> tuple[str, ...]:
    """Move the case folders of ``archive`` that hold no recorded case aside; their names.

    Each goes to ``ROOT/teaching/orphans/CASE_UID`` (durably, folders 0700; a name held
    before gets a suffix, ``CASE_UID.2``), never deleted: a crash after a case's files
    are written but before its rows are committed leaves such a folder (never shown),
    but so does an index restored from a backup older than the files (a recorded case),
    and a crash while a case is withdrawn (:meth:`TeachingStore.remove`: an administrator
    deletes its folder once checked). Run it while no case is being made.

    Raises
    ------
    StorageError
        The folder or the database cannot be read, or a folder cannot be moved.
    """
    root = archive.root / "teaching"
    with guard("moving aside orphan teaching cases"):
        if not root.is_dir():
            return ()
        with Session(archive._engine) as session:
            recorded = set(session.scalars(select(TeachingCaseRow.case_uid)))
        orphans = sorted(
            entry.name
            for entry in root.iterdir()
            if entry.is_dir() and entry.name != ORPHANS and entry.name not in recorded
        )
        for name in orphans:
            target = root / ORPHANS / name
            for n in itertools.count(2):
                if not target.exists():
                    break
                target = root / ORPHANS / f"{name}.{n}"
            move_durably(root / name, target)
    return tuple(orphans)


def _aad(case_uid: str, item: TeachingInstance) -> bytes:
    return MAGIC + f"{case_uid}/{item.sop_instance_uid}_{item.sha256}".encode("ascii")


def _plaintext(folder: Path, item: TeachingInstance) -> bytes:
    try:
        data = (folder / f"{item.sop_instance_uid}.dcm").read_bytes()
    except FileNotFoundError:
        raise InvalidMetadataError(f"no file for {item.sop_instance_uid} in {folder}") from None
    if len(data) != item.size or hashlib.sha256(data).hexdigest() != item.sha256:
        raise InvalidMetadataError(f"the file of {item.sop_instance_uid} is not the one described")
    return data


def _case(session: Session, row: TeachingCaseRow) -> TeachingCase:
    rows: Sequence[TeachingInstanceRow] = session.scalars(
        select(TeachingInstanceRow)
        .options(defer(TeachingInstanceRow.descriptor))  # large; the worker's alone
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
        measurements=tuple(row.measurements or ()),
        instances=tuple(
            TeachingInstance(
                i.sop_instance_uid, i.sop_class_uid, tuple(i.kinds), i.frames, i.size, i.sha256
            )
            for i in rows
        ),
        created_by=row.created_by,
        created_at=row.created_at,
    )
