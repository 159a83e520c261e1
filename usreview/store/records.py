"""What goes into the archive and what comes out: plain frozen records, no database objects."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final, TypeAlias

from usreview.dicom.enum import ImageKind
from usreview.dicom.header import HEADER_FIELDS, header_fields, header_problem, is_uid
from usreview.store.errors import InvalidMetadataError
from usreview.store.status import StudyStatus

if TYPE_CHECKING:
    from usreview.dicom import UltrasoundInstance

__all__ = [
    "HEADER_FIELDS",
    "STUDY_FIELDS",
    "Caller",
    "ConflictRecord",
    "InstanceMetadata",
    "InstanceRecord",
    "PutResult",
    "Receipt",
    "RecoveryReport",
    "Reviewer",
    "SiteActivity",
    "StatusChange",
    "StudyRecord",
    "header_fields",
    "validate_site",
]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def _check_uid(name: str, value: str) -> str:
    if not is_uid(value):
        raise InvalidMetadataError(f"{name} must be a DICOM UID (digits and dots, at most 64)")
    return value


#: The header fields that describe the study (kept on it; the others describe the series).
STUDY_FIELDS: Final = tuple(f for f in HEADER_FIELDS if f not in ("manufacturer", "model_name"))


def _check_header(name: str, value: str | None) -> str | None:
    problem = header_problem(name, value)
    if problem is not None:
        raise InvalidMetadataError(problem)
    return value


def validate_site(site: str) -> str:
    """Return ``site`` if it is a valid site name, else raise :class:`InvalidMetadataError`."""
    if not isinstance(site, str) or not _SITE.fullmatch(site):
        raise InvalidMetadataError(
            "site must be 1-64 characters of letters, digits and . _ @ -, "
            f"starting with a letter or digit (got {site!r})"
        )
    return site


@dataclass(frozen=True, slots=True, init=False)
class InstanceMetadata:
    """What the verifying layer tells the archive about one envelope.

    Parameters
    ----------
    sop_instance_uid, study_instance_uid, series_instance_uid, sop_class_uid
        The DICOM UIDs of the instance inside the envelope.
    kinds
        Its :class:`~usreview.dicom.ImageKind` values (stored sorted, without repeats).
    plaintext_sha256
        SHA-256 of the plaintext DICOM file, hexadecimal.
    size
        Size of the plaintext DICOM file in bytes.
    patient_name, patient_id, patient_birth_date, patient_sex, study_description, \
    study_date, study_time, accession_number, referring_physician_name, manufacturer, \
    model_name
        The header's description (:data:`HEADER_FIELDS`, as :func:`header_fields` gives
        it), each optional; dates are ``YYYY-MM-DD``. The study keeps the first non-empty
        value of each study field, the series the equipment's.
    """

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    kinds: tuple[ImageKind, ...]
    plaintext_sha256: str
    size: int
    patient_name: str | None
    patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_description: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    referring_physician_name: str | None
    manufacturer: str | None
    model_name: str | None

    def __init__(
        self,
        *,
        sop_instance_uid: str,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_class_uid: str,
        kinds: Iterable[ImageKind | str],
        plaintext_sha256: str,
        size: int,
        patient_name: str | None = None,
        patient_id: str | None = None,
        patient_birth_date: str | None = None,
        patient_sex: str | None = None,
        study_description: str | None = None,
        study_date: str | None = None,
        study_time: str | None = None,
        accession_number: str | None = None,
        referring_physician_name: str | None = None,
        manufacturer: str | None = None,
        model_name: str | None = None,
    ) -> None:
        for name, value in (
            ("sop_instance_uid", sop_instance_uid),
            ("study_instance_uid", study_instance_uid),
            ("series_instance_uid", series_instance_uid),
            ("sop_class_uid", sop_class_uid),
        ):
            object.__setattr__(self, name, _check_uid(name, value))
        try:
            parsed = tuple(sorted({ImageKind(k) for k in kinds}))
        except (TypeError, ValueError):
            known = ", ".join(k.value for k in ImageKind)
            raise InvalidMetadataError(f"kinds must be image kinds ({known})") from None
        object.__setattr__(self, "kinds", parsed)
        digest = plaintext_sha256.lower() if isinstance(plaintext_sha256, str) else ""
        if not _SHA256.fullmatch(digest):
            raise InvalidMetadataError("plaintext_sha256 must be 64 hexadecimal digits")
        object.__setattr__(self, "plaintext_sha256", digest)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidMetadataError(f"size must be a non-negative integer (got {size!r})")
        object.__setattr__(self, "size", size)
        header = {
            "patient_name": patient_name,
            "patient_id": patient_id,
            "patient_birth_date": patient_birth_date,
            "patient_sex": patient_sex,
            "study_description": study_description,
            "study_date": study_date,
            "study_time": study_time,
            "accession_number": accession_number,
            "referring_physician_name": referring_physician_name,
            "manufacturer": manufacturer,
            "model_name": model_name,
        }
        for name, text in header.items():
            object.__setattr__(self, name, _check_header(name, text))

    @property
    def header(self) -> dict[str, str | None]:
        """The :data:`HEADER_FIELDS` as a dict."""
        return {name: getattr(self, name) for name in HEADER_FIELDS}

    @classmethod
    def from_instance(
        cls, instance: UltrasoundInstance, *, plaintext_sha256: str, size: int
    ) -> InstanceMetadata:
        """Metadata of an :class:`~usreview.dicom.UltrasoundInstance` read from the plaintext."""
        return cls(
            sop_instance_uid=instance.sop_instance_uid,
            study_instance_uid=instance.study_instance_uid,
            series_instance_uid=instance.series_instance_uid,
            sop_class_uid=str(instance.sop_class_uid),
            kinds=instance.kinds,
            plaintext_sha256=plaintext_sha256,
            size=size,
            **header_fields(instance.dataset),
        )


@dataclass(frozen=True, slots=True)
class Reviewer:
    """A reviewer's view: the records of ``sites`` (all sites when ``None``)."""

    name: str
    sites: frozenset[str] | None = None

    def may_see(self, site: str) -> bool:
        """Whether this reviewer may see records of ``site``."""
        return self.sites is None or site in self.sites


#: Who is asking: a site by name, or a reviewer.
Caller: TypeAlias = str | Reviewer


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One durably stored instance: its metadata, its envelope object and when it came."""

    site: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    kinds: tuple[ImageKind, ...]
    plaintext_sha256: str
    size: int
    envelope_sha256: str
    envelope_size: int
    object_key: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class PutResult:
    """What :meth:`~usreview.store.Archive.put` returns once the instance is durable.

    ``duplicate`` is true when the same plaintext was already stored under this UID;
    ``record`` is then the existing record and nothing was written.
    """

    record: InstanceRecord
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """A study, its current status and how many instances and series it has."""

    site: str
    study_instance_uid: str
    status: StudyStatus
    status_changed_at: datetime
    reason: str | None
    created_at: datetime
    series: int
    instances: int


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One step of a study's status history (``previous`` is ``None`` at creation)."""

    study_instance_uid: str
    previous: StudyStatus | None
    status: StudyStatus
    at: datetime
    reason: str | None
    actor: str | None


@dataclass(frozen=True, slots=True)
class Receipt:
    """One SOP Instance UID that is durably stored for a site (the caller signs these)."""

    sop_instance_uid: str
    study_instance_uid: str
    plaintext_sha256: str
    size: int
    received_at: datetime


@dataclass(frozen=True, slots=True)
class SiteActivity:
    """What the archive holds of one site: for an administrator's overview."""

    site: str
    instances: int
    studies: int
    last_received: datetime | None
    open_conflicts: int


@dataclass(frozen=True, slots=True)
class ConflictRecord:
    """An envelope kept aside because it conflicts with what is stored."""

    id: int
    site: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    plaintext_sha256: str
    size: int
    object_key: str
    reason: str
    received_at: datetime
    resolved_at: datetime | None
    resolution: str | None


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :meth:`~usreview.store.Archive.recover` or ``fsck`` found (and recover did).

    ``orphans`` are object keys that no row names (moved to ``orphans/`` by ``recover``,
    only listed by ``fsck``); ``missing`` and ``corrupt`` list SOP Instance UIDs whose
    object is gone or changed (never expected: report them to an administrator).
    """

    temp_files_removed: int = 0
    orphans: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()
    checked: int = 0

    @property
    def clean(self) -> bool:
        """True when no stored instance lacks its object or has changed bytes."""
        return not self.missing and not self.corrupt
