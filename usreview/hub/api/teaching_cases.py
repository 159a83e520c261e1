"""Making a teaching case of a published study: copy, de-identify, record.

:func:`make_case` runs in the service's thread pool, one case per study at a time:

1. the study must be visible to the reviewer and published (or delivered): 409
   ``not_ready`` otherwise; a study made into a case already gives that case, its text
   brought up to the latest report first (:func:`refresh_case_text`);
2. each instance is opened from the archive
   (:func:`~usreview.hub.api.handlers_review.open_instance`), read with
   :func:`usreview.dicom.read` (the decoded-size cap applies) and copied by
   :func:`usreview.teaching.deidentify` with one UID map for the case; an instance that
   cannot be cleaned (no ultrasound regions, undecodable pixels) is left out and the
   reason kept; none left is 422 ``not_deidentifiable``;
3. the latest report's exam type, findings, impression and recommendations are kept,
   cleaned of the source's identifiers and of dates (:func:`usreview.teaching.scrub_text`:
   person names by their parts, other identifiers as whole phrases); not the reviewer's
   name, not the dates; and its measurements (concept, value, unit, how they were
   decided, the cleaned label), without the source instance's UID: a code of a scheme
   :class:`~usreview.processing.CodingScheme` does not know, or whose value held an
   identifier, is dropped; a measurement whose unit is not a plausible UCUM unit is
   dropped whole (its value may be the identifier);
4. the copies are encrypted at rest with the hub's at-rest key and the case recorded
   (:class:`usreview.store.teaching.TeachingStore`, from :func:`teaching_store`).

The plaintext sources and copies are removed as soon as they are used.

An amended report reaches its case: publishing a report calls :func:`refresh_case_text`,
which cleans the new version's words against the identifiers of the study's instances
(their headers read again) and replaces the case's text, so trainees never learn from a
superseded diagnosis.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from usreview.dicom import read
from usreview.errors import InputError
from usreview.hub.api.errors import ApiError
from usreview.hub.api.handlers_review import open_instance
from usreview.hub.errors import StateError
from usreview.processing.results import CodingScheme
from usreview.store import Archive, InstanceRecord, Reviewer, StudyStatus
from usreview.store.teaching import TeachingCase, TeachingInstance, TeachingStore
from usreview.teaching import UidMap, case_name, deidentify, scrub_text

if TYPE_CHECKING:
    from usreview.hub.api.app import ServiceContext

__all__ = [
    "IDENTIFYING",
    "make_case",
    "open_teaching_store",
    "refresh_case_text",
    "teaching_store",
]

#: Attributes of the source whose values are removed from the reviewer's text.
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstitutionName",
    "StationName",
    "StudyID",
)
#: Those of :data:`IDENTIFYING` that are person names (VR PN): removed by their parts.
_PERSON_NAMES = frozenset(k for k in IDENTIFYING if dictionary_VR(Tag(k)) == "PN")
#: A plausible UCUM unit: short printable ASCII without spaces, no run of three digits.
_UNIT = re.compile(r"(?!.*\d{3})[!-~]{1,16}")
_PUBLISHED = (StudyStatus.PUBLISHED, StudyStatus.DELIVERED)
#: What a teaching case keeps of each of the report's measurements (and its cleaned label).
_MEASUREMENT_KEYS = ("name", "value", "unit", "code", "origin", "decision")
_LOCKS = tuple(threading.Lock() for _ in range(16))


def teaching_store(context: ServiceContext) -> TeachingStore:
    """The archive's teaching cases, with the hub's at-rest key (``STATE/at-rest.key``).

    Raises
    ------
    StateError
        The key file is missing or does not hold 32 bytes.
    """
    return open_teaching_store(context.archive, context.state.at_rest_key)


def open_teaching_store(archive: Archive, key_file: Path) -> TeachingStore:
    """The teaching cases of ``archive``, with the at-rest key in ``key_file``.

    Raises
    ------
    StateError
        The key file is missing or does not hold 32 bytes.
    """
    try:
        key = key_file.read_bytes()
    except OSError as exc:
        raise StateError(f"{key_file}: {exc.strerror}; restore it from the backup") from None
    if len(key) != 32:
        raise StateError(f"{key_file} does not hold 32 bytes; restore it from the backup")
    return TeachingStore(archive, key)


def make_case(
    context: ServiceContext, reviewer: Reviewer, study_instance_uid: str
) -> tuple[TeachingCase, bool]:
    """The teaching case of a study, made now if needed; whether it was made now.

    Raises
    ------
    NotFoundError
        No such study for this reviewer.
    ApiError
        409 ``not_ready`` (not published), 422 ``not_deidentifiable`` (no instance
        can be cleaned).
    StorageError
        The archive failed; nothing was recorded.
    """
    archive = context.archive
    store = teaching_store(context)
    with _LOCKS[hash(study_instance_uid) % len(_LOCKS)]:
        entry = archive.review.entry(reviewer, study_instance_uid)
        known = store.case_of_study(reviewer, study_instance_uid)
        if known is not None:
            return _refreshed(context, store, reviewer, study_instance_uid, known), False
        if entry.status not in _PUBLISHED:
            raise ApiError(
                409,
                "not_ready",
                f"study {study_instance_uid} is {entry.status.value}: publish its report "
                "before making it a teaching case",
            )
        reports = archive.review.reports(reviewer, study_instance_uid)
        records = archive.list_instances(reviewer, study_instance_uid=study_instance_uid)
        with tempfile.TemporaryDirectory(dir=context.ingestor.quarantine_dir) as scratch:
            folder = Path(scratch) / "case"
            folder.mkdir(mode=0o700)
            uids = UidMap()
            case_uid = uids(study_instance_uid)
            made: list[TeachingInstance] = []
            refused: list[str] = []
            identifiers = _Identifiers(names=[reviewer.name, *(r.reviewer for r in reports)])
            for n, record in enumerate(records, 1):
                try:
                    item, found = _copy(context, reviewer, record, uids, folder, case_uid)
                except InputError as exc:
                    refused.append(f"instance {n} of {len(records)}: {exc}")
                    continue
                made.append(item)
                identifiers.extend(found)
            if not made:
                raise ApiError(
                    422,
                    "not_deidentifiable",
                    "no instance of the study can be de-identified: " + "; ".join(refused),
                )
            text = _case_text(reports[-1].content if reports else {}, identifiers)
            case = TeachingCase(
                case_uid=case_uid,
                **text,
                kinds=tuple(sorted({k for item in made for k in item.kinds})),
                refused=tuple(refused),
                instances=tuple(made),
            )
            # Another service process may have recorded the study's case meanwhile: that
            # case is the one (this one's copies are removed), not made now.
            recorded = store.add(reviewer, study_instance_uid, folder, case)
            return recorded, recorded.case_uid == case_uid


def refresh_case_text(
    context: ServiceContext, reviewer: Reviewer, study_instance_uid: str
) -> TeachingCase | None:
    """The study's teaching case with the latest report's cleaned words; ``None``: no case.

    Raises
    ------
    NotFoundError
        No such study for this reviewer.
    StorageError
        The archive failed; the case is unchanged.
    """
    store = teaching_store(context)
    with _LOCKS[hash(study_instance_uid) % len(_LOCKS)]:
        known = store.case_of_study(reviewer, study_instance_uid)
        if known is None:
            return None
        return _refreshed(context, store, reviewer, study_instance_uid, known)


def _refreshed(
    context: ServiceContext,
    store: TeachingStore,
    reviewer: Reviewer,
    study_instance_uid: str,
    case: TeachingCase,
) -> TeachingCase:
    """``case`` with the latest report's words (held lock: the study's)."""
    archive = context.archive
    reports = archive.review.reports(reviewer, study_instance_uid)
    if not reports:
        return case
    identifiers = _Identifiers(names=[reviewer.name, *(r.reviewer for r in reports)])
    for record in archive.list_instances(reviewer, study_instance_uid=study_instance_uid):
        source = open_instance(context, reviewer, record)
        try:  # the reader make_case uses (its header only: pixels are decoded lazily)
            identifiers.extend(_identifiers(read(source).dataset))
        except InputError:
            continue  # its copy was refused when the case was made: nothing of it is kept
        finally:
            source.unlink(missing_ok=True)
    text = _case_text(reports[-1].content, identifiers)
    if all(getattr(case, key) == value for key, value in text.items()):
        return case
    return store.set_text(reviewer, study_instance_uid, **text)


class _Identifiers:
    """The values to clean a report of: identifiers (whole phrases) and person names."""

    def __init__(self, phrases: list[str] | None = None, names: list[str] | None = None) -> None:
        self.phrases = list(phrases or ())
        self.names = list(names or ())

    def extend(self, other: _Identifiers) -> None:
        """Add the values of ``other``."""
        self.phrases += other.phrases
        self.names += other.names

    def scrub(self, text: str) -> str:
        """``text`` cleaned of these values and of dates (:func:`scrub_text`)."""
        return scrub_text(text, self.phrases, self.names)


def _case_text(content: Mapping[str, Any], identifiers: _Identifiers) -> dict[str, Any]:
    """A report's exam type, words and measurements, cleaned of ``identifiers`` and of
    dates; a measurement keeps its concept, value, unit and how it was decided, never the
    source instance's UID (see :func:`_measurement`)."""

    def said(key: str) -> str:
        return identifiers.scrub(str(content.get(key) or ""))

    measurements = []
    for item in content.get("measurements") or ():
        kept = _measurement(item, identifiers)
        if kept is not None:
            measurements.append(kept)
    return {
        "exam_type": str(content["exam_type"]) if content.get("exam_type") else None,
        "findings": said("findings"),
        "impression": said("impression"),
        "recommendations": said("recommendations"),
        "measurements": tuple(measurements),
    }


def _measurement(item: Mapping[str, Any], identifiers: _Identifiers) -> dict[str, Any] | None:
    """What a teaching case keeps of a report's measurement; ``None``: nothing.

    Its free text (name, label, code meaning and value) is cleaned; a code of an unknown
    scheme, or whose value held an identifier or a date, is dropped (``None``); a unit
    that is not a plausible UCUM unit (:data:`_UNIT`) or that holds an identifier drops
    the whole measurement, since its value may be the identifier typed in the wrong place.
    """
    unit = item.get("unit")
    if unit is not None and not (
        isinstance(unit, str) and _UNIT.fullmatch(unit) and identifiers.scrub(unit) == unit
    ):
        return None
    kept = {key: item[key] for key in _MEASUREMENT_KEYS if key in item}
    for key in ("name", "label"):  # free text a reviewer may type
        if item.get(key):
            kept[key] = identifiers.scrub(str(item[key]))
    if "code" in item:
        kept["code"] = _code(item["code"], identifiers)
    return kept


def _code(code: Any, identifiers: _Identifiers) -> dict[str, Any] | None:
    """A measurement's code with its value and meaning cleaned; ``None``: dropped."""
    if not isinstance(code, Mapping) or code.get("scheme") not in set(CodingScheme):
        return None
    value = str(code.get("value") or "")
    cleaned = identifiers.scrub(value)
    concept = code["scheme"] == CodingScheme.SNOMED and _is_sctid(value)
    if cleaned != value and not (concept and value not in identifiers.phrases):
        return None  # an identifier or a date where a code belongs: no code left
    return {**code, "meaning": identifiers.scrub(str(code.get("meaning") or ""))}


def _is_sctid(value: str) -> bool:
    """Whether ``value`` has the form of a SNOMED CT concept id (its many digits would look
    like an identifier to :func:`scrub_text`): 6 to 18 digits, partition ``00`` or ``10``."""
    return bool(re.fullmatch(r"\d{3,15}[01]0\d", value))


def _copy(
    context: ServiceContext,
    reviewer: Reviewer,
    record: InstanceRecord,
    uids: UidMap,
    folder: Path,
    case_uid: str,
) -> tuple[TeachingInstance, _Identifiers]:
    source = open_instance(context, reviewer, record)
    try:
        instance = read(source)
        copy = deidentify(instance, uids, label=case_name(case_uid))
        identifiers = _identifiers(instance.dataset)
    finally:
        with contextlib.suppress(FileNotFoundError):
            source.unlink()
    path = folder / f"{copy.SOPInstanceUID}.dcm"
    copy.save_as(path, enforce_file_format=True)
    path.chmod(0o600)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    item = TeachingInstance(
        sop_instance_uid=str(copy.SOPInstanceUID),
        sop_class_uid=str(copy.SOPClassUID),
        kinds=tuple(k.value for k in instance.kinds),
        frames=instance.pixels.number_of_frames,
        size=path.stat().st_size,
        sha256=digest,
    )
    return item, identifiers


def _identifiers(dataset: Dataset) -> _Identifiers:
    """The values of ``dataset``'s :data:`IDENTIFYING` attributes."""
    found = _Identifiers()
    for keyword in IDENTIFYING:
        value = dataset.get(keyword)
        if value:
            many = isinstance(value, list | MultiValue)
            values = [str(v) for v in value] if many else [str(value)]
            (found.names if keyword in _PERSON_NAMES else found.phrases).extend(values)
    return found
