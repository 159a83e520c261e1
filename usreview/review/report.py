"""A reviewer's report: validated from JSON, built as a DICOM SR, summarised as text.

>>> report = Report.from_json(body)                        # doctest: +SKIP
>>> sr = build_report_sr(report, sources, reviewer="dr-x", organization="usreview hub",
...                      sop_instance_uid=uid, series_instance_uid=series, version=1)
>>> text = summary_text(report, reviewer="dr-x", version=1)  # doctest: +SKIP

The SR is a Comprehensive SR whose content is a TID 1500 Measurement Report observed by
the reviewer (a person): one measurement group (TID 1501) per source instance and label
(the reviewer's label is the group's Tracking Identifier), each
measurement a TID 300 numeric coded as given, or, without a code, with the LOINC code of
the automatic measurement of that name (:data:`usreview.processing.quantification.codes.CODES`),
else a private code; its method says whether it was measured automatically and accepted
or corrected, or measured by the reviewer. A group's Tracking Unique Identifier is derived
from its source instance (or, for measurements without one, the study) and its label, so
it stays the same across amendments. The key images are the entries of a TID 1600 "Image
Library" (111028, DCM); a "Qualitative Evaluations" container (C0034375, UMLS) holds the
findings, the impression and the recommendations as text and the urgency as a code. The
private scheme ``99USREVIEW`` (methods, urgency, examination) is declared in the Coding
Scheme Identification Sequence; the text is UTF-8 (``ISO_IR 192``) whatever the sources
declare. The document is complete, final and verified by the reviewer; an amendment names
the version it replaces in its Predecessor Documents Sequence. Nothing here does I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeVar

import highdicom as hd
from highdicom.sr import CodedConcept, RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from usreview.dicom.header import is_uid
from usreview.errors import ReportError
from usreview.processing.quantification.codes import CODES
from usreview.processing.sr import MANUFACTURER
from usreview.processing.sr_codes import (
    FINDING,
    QUALITATIVE_EVALUATIONS,
    RECOMMENDATION,
    SPECIFIC_CHARACTER_SET,
    ULTRASONOGRAPHY,
    declare_private_schemes,
    stamp_local_time,
)

__all__ = [
    "MAX_KEY_IMAGES",
    "MAX_LABEL",
    "MAX_MEASUREMENTS",
    "MAX_RECIPIENTS",
    "MAX_TEXT",
    "ExamType",
    "MeasurementDecision",
    "MeasurementOrigin",
    "Report",
    "ReportCode",
    "ReportMeasurement",
    "Urgency",
    "build_report_sr",
    "summary_text",
]

#: Most characters of each text field.
MAX_TEXT: Final = 20_000
#: Most measurements, key images and recipients of one report.
MAX_MEASUREMENTS: Final = 200
MAX_KEY_IMAGES: Final = 100
MAX_RECIPIENTS: Final = 20
#: Most characters of a measurement's label.
MAX_LABEL: Final = 64
_PRIVATE = "99USREVIEW"
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_UCUM = re.compile(r"[!-~]{1,32}")  # printable ASCII without spaces, as UCUM's case-sensitive codes
_SCHEME = re.compile(r"[A-Za-z0-9_.-]{1,16}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_IMPRESSION = CodedConcept("121073", "DCM", "Impression")
_URGENCY = CodedConcept("urgency", _PRIVATE, "Report urgency")
_PERSON = CodedConcept("121006", "DCM", "Person")
_CONTAINS = RelationshipTypeValues.CONTAINS
_E = TypeVar("_E", bound=StrEnum)


class ExamType(StrEnum):
    """What kind of examination the report is about."""

    VASCULAR = "vascular"
    ECHO = "echo"
    OBSTETRIC = "obstetric"
    ABDOMINAL = "abdominal"
    GENERAL = "general"


class Urgency(StrEnum):
    """How soon the originating site must act on the report."""

    ROUTINE = "routine"
    URGENT = "urgent"
    CRITICAL = "critical"


class MeasurementOrigin(StrEnum):
    """Who measured: the automatic processing, or the reviewer."""

    AUTOMATIC = "automatic"
    REVIEWER = "reviewer"


class MeasurementDecision(StrEnum):
    """What the reviewer did with the value: accepted it as it is, or corrected it."""

    ACCEPTED = "accepted"
    CORRECTED = "corrected"


_EXAM_MEANINGS: Final = {
    ExamType.VASCULAR: "Vascular ultrasound examination",
    ExamType.ECHO: "Echocardiography",
    ExamType.OBSTETRIC: "Obstetric ultrasound examination",
    ExamType.ABDOMINAL: "Abdominal ultrasound examination",
    ExamType.GENERAL: "General ultrasound examination",
}
_A, _R = MeasurementOrigin.AUTOMATIC, MeasurementOrigin.REVIEWER
_OK, _FIXED = MeasurementDecision.ACCEPTED, MeasurementDecision.CORRECTED
_METHODS: Final = {
    (_A, _OK): "automatic, accepted by the reviewer",
    (_A, _FIXED): "automatic, corrected by the reviewer",
    (_R, _OK): "measured by the reviewer",
    (_R, _FIXED): "measured by the reviewer, corrected",
}


@dataclass(frozen=True)
class ReportCode:
    """A coded concept (as DICOM's Code Sequence items): value, scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str

    def concept(self) -> CodedConcept:
        """The highdicom concept."""
        return CodedConcept(self.value, self.scheme, self.meaning)

    def to_json(self) -> dict[str, str]:
        """``{"value", "scheme", "meaning"}``."""
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}


@dataclass(frozen=True)
class ReportMeasurement:
    """One value of the report, with its unit (UCUM), concept and where it comes from.

    ``label`` is the reviewer's name for what was measured (``"Left kidney length"``),
    or ``None``.
    """

    name: str
    value: float
    unit: str
    code: ReportCode | None
    origin: MeasurementOrigin
    decision: MeasurementDecision
    source_instance: str | None
    label: str | None = None

    def concept(self) -> CodedConcept:
        """Its code, else the automatic measurement's code of that name, else a private one."""
        if self.code is not None:
            return self.code.concept()
        known = CODES.get(self.name)
        if known is not None:
            code = known[0]
            return CodedConcept(code.value, code.scheme.value, code.meaning)
        return CodedConcept(self.name, _PRIVATE, self.name)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (as :meth:`Report.from_json` takes it); ``label`` only when set."""
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "code": None if self.code is None else self.code.to_json(),
            "origin": self.origin.value,
            "decision": self.decision.value,
            "source_instance": self.source_instance,
            **({} if self.label is None else {"label": self.label}),
        }


@dataclass(frozen=True)
class Report:
    """What a reviewer publishes about a study.

    Build it with :meth:`from_json`, which validates every field and names the one that
    fails (:class:`~usreview.errors.ReportError`). Whether the key images and source
    instances belong to the study and the recipients are registered sites is for the
    service to check.
    """

    exam_type: ExamType
    findings: str
    impression: str
    recommendations: str
    urgency: Urgency
    measurements: tuple[ReportMeasurement, ...]
    key_images: tuple[str, ...]
    recipients: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Any) -> Report:
        """Validate a report's JSON object.

        ``exam_type``, ``impression`` and ``urgency`` are required; the texts
        ``findings`` and ``recommendations`` default to empty and the lists to none.

        Raises
        ------
        ReportError
            A field is missing, unknown, of the wrong type or out of range.
        """
        fields = _object(data, "report", required=("exam_type", "impression", "urgency"),
                         optional=("findings", "recommendations", "measurements",
                                   "key_images", "recipients"))  # fmt: skip
        impression = _text(fields["impression"], "impression")
        if not impression.strip():
            raise ReportError("impression", "must not be empty")
        measurements = _list(fields.get("measurements", []), "measurements", MAX_MEASUREMENTS)
        return cls(
            exam_type=_choice(ExamType, fields["exam_type"], "exam_type"),
            findings=_text(fields.get("findings", ""), "findings"),
            impression=impression,
            recommendations=_text(fields.get("recommendations", ""), "recommendations"),
            urgency=_choice(Urgency, fields["urgency"], "urgency"),
            measurements=tuple(
                _measurement(item, f"measurements[{n}]") for n, item in enumerate(measurements)
            ),
            key_images=_names(
                fields.get("key_images", []),
                "key_images",
                MAX_KEY_IMAGES,
                is_uid,
                "a SOP Instance UID",
            ),
            recipients=_names(
                fields.get("recipients", []), "recipients", MAX_RECIPIENTS, _is_site, "a site name"
            ),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form (:meth:`from_json` of it gives the same report)."""
        return {
            "exam_type": self.exam_type.value,
            "findings": self.findings,
            "impression": self.impression,
            "recommendations": self.recommendations,
            "urgency": self.urgency.value,
            "measurements": [m.to_json() for m in self.measurements],
            "key_images": list(self.key_images),
            "recipients": list(self.recipients),
        }

    @property
    def referenced_instances(self) -> tuple[str, ...]:
        """The SOP Instance UIDs the report names (key images, then measurement sources)."""
        found = [*self.key_images, *(m.source_instance for m in self.measurements)]
        return tuple(dict.fromkeys(uid for uid in found if uid is not None))


# -- validation ---------------------------------------------------------------------------


def _object(
    data: Any, where: str, *, required: Sequence[str], optional: Sequence[str]
) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ReportError(where, "must be a JSON object")
    unknown = sorted(set(data) - {*required, *optional})
    if unknown:
        prefix = "" if where == "report" else f"{where}."
        raise ReportError(f"{prefix}{unknown[0]}", "is not a known field")
    for name in required:
        if name not in data:
            prefix = "" if where == "report" else f"{where}."
            raise ReportError(f"{prefix}{name}", "is required")
    return data


def _text(value: Any, field: str, *, longest: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ReportError(field, "must be text")
    if len(value) > longest:
        raise ReportError(field, f"must be at most {longest} characters")
    if _CONTROL.search(value):
        raise ReportError(field, "must not hold control characters (other than line breaks)")
    return value


def _choice(kind: type[_E], value: Any, field: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ReportError(field, f"must be one of {choices}") from None


def _list(value: Any, field: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise ReportError(field, "must be a list")
    if len(value) > most:
        raise ReportError(field, f"may hold at most {most} items")
    return value


def _is_site(value: object) -> bool:
    return isinstance(value, str) and _SITE.fullmatch(value) is not None


def _names(
    value: Any, field: str, most: int, valid: Callable[[object], bool], what: str
) -> tuple[str, ...]:
    items = _list(value, field, most)
    for n, item in enumerate(items):
        if not valid(item):
            raise ReportError(f"{field}[{n}]", f"must be {what}")
        if item in items[:n]:
            raise ReportError(f"{field}[{n}]", f"{item} is listed twice")
    return tuple(items)


def _finite(value: float) -> bool:
    """Whether ``value`` is a finite float (JSON integers can be too large for one)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _measurement(item: Any, where: str) -> ReportMeasurement:
    fields = _object(item, where, required=("name", "value", "unit"),
                     optional=("code", "origin", "decision", "source_instance",
                               "label"))  # fmt: skip
    name = _text(fields["name"], f"{where}.name", longest=64).strip()
    if not name:
        raise ReportError(f"{where}.name", "must not be empty")
    value = fields["value"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise ReportError(f"{where}.value", "must be a finite number")
    unit = fields["unit"]
    if not isinstance(unit, str) or not _UCUM.fullmatch(unit):
        raise ReportError(f"{where}.unit", "must be a UCUM unit (e.g. cm/s, mm, 1)")
    source = fields.get("source_instance")
    if source is not None and not is_uid(source):
        raise ReportError(f"{where}.source_instance", "must be a SOP Instance UID or null")
    label = fields.get("label")
    if label is not None:
        label = _text(label, f"{where}.label", longest=MAX_LABEL).strip() or None
    return ReportMeasurement(
        name=name,
        value=float(value),
        unit=unit,
        code=_code(fields.get("code"), f"{where}.code"),
        origin=_choice(MeasurementOrigin, fields.get("origin", "reviewer"), f"{where}.origin"),
        decision=_choice(
            MeasurementDecision, fields.get("decision", "accepted"), f"{where}.decision"
        ),
        source_instance=source,
        label=label,
    )


def _code(item: Any, where: str) -> ReportCode | None:
    if item is None:
        return None
    fields = _object(item, where, required=("value", "scheme", "meaning"), optional=())
    value = _text(fields["value"], f"{where}.value", longest=64).strip()
    meaning = _text(fields["meaning"], f"{where}.meaning", longest=64).strip()
    scheme = fields["scheme"]
    if not value or not meaning:
        raise ReportError(where, "value and meaning must not be empty")
    if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme):
        raise ReportError(f"{where}.scheme", "must be a coding scheme designator (LN, DCM, SCT...)")
    return ReportCode(value, scheme, meaning)


# -- the SR -------------------------------------------------------------------------------


def build_report_sr(
    report: Report,
    source_datasets: Sequence[Dataset],
    *,
    reviewer: str,
    organization: str,
    sop_instance_uid: str,
    series_instance_uid: str,
    version: int,
    previous: Dataset | None = None,
) -> hd.sr.ComprehensiveSR:
    """The verified SR of ``report`` about the study of ``source_datasets``.

    Parameters
    ----------
    report
        The validated report.
    source_datasets
        Headers (pixels not needed) of every instance the report names
        (:attr:`Report.referenced_instances`), or of one instance of the study when it
        names none: patient, study and references come from them.
    reviewer
        The verifying observer (the reviewer's name).
    organization
        The verifying organization.
    sop_instance_uid, series_instance_uid
        UIDs of the new document.
    version
        The report's version (its Instance Number).
    previous
        For an amendment: the replaced SR's UIDs (``StudyInstanceUID``,
        ``SeriesInstanceUID``, ``SOPClassUID``, ``SOPInstanceUID``).

    Raises
    ------
    ReportError
        A named instance is not among ``source_datasets``, or there is none.
    """
    if not source_datasets:
        raise ReportError("key_images", "the report needs at least one instance of the study")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_datasets}
    for uid in report.referenced_instances:
        if uid not in by_uid:
            raise ReportError("key_images", f"instance {uid} is not among the sources")
    name = _person_name(reviewer)
    person = hd.sr.ObserverContext(
        observer_type=_PERSON,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=name, organization_name=organization
        ),
    )
    document = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person),
        procedure_reported=[ULTRASONOGRAPHY, _exam_concept(report.exam_type)],
        imaging_measurements=_groups(report, by_uid, source_datasets[0]),
        referenced_images=[by_uid[uid] for uid in report.key_images] or None,
    )
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=_CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(_evaluations(report))
    document[0].ContentSequence.append(container)
    sr = hd.sr.ComprehensiveSR(
        evidence=list(by_uid.values()),
        content=document[0],
        series_instance_uid=series_instance_uid,
        series_number=9101,
        sop_instance_uid=sop_instance_uid,
        instance_number=version,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=name,
        verifying_organization=organization,
        previous_versions=None if previous is None else [previous],
        series_description="usreview report (expert review)",
        specific_character_set=SPECIFIC_CHARACTER_SET,
    )
    now = stamp_local_time(sr, source_datasets[0], ("InstanceCreation", "Content"))
    # highdicom dates the verification in the hub's zone, without an offset.
    sr.VerifyingObserverSequence[0].VerificationDateTime = now.strftime("%Y%m%d%H%M%S%z")
    declare_private_schemes(sr)
    return sr


def _person_name(name: str) -> str:
    """``name`` as a DICOM PN: a hub login (one component) gets the trailing caret."""
    cleaned = re.sub(r"[\\\x00-\x1f]", " ", name).strip()[:64] or "unknown"
    return cleaned if "^" in cleaned else f"{cleaned}^"


def _exam_concept(exam: ExamType) -> CodedConcept:
    return CodedConcept(f"exam-{exam.value}", _PRIVATE, _EXAM_MEANINGS[exam])


def _groups(
    report: Report, by_uid: Mapping[str, Dataset], first: Dataset
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    sources: dict[tuple[str | None, str | None], list[ReportMeasurement]] = {}
    for measurement in report.measurements:
        key = (measurement.source_instance, measurement.label)
        sources.setdefault(key, []).append(measurement)
    study = str(first.StudyInstanceUID)  # what study-level measurements are tracked by
    groups = []
    for (uid, label), measurements in sources.items():
        source = by_uid[uid] if uid is not None else None
        references = [hd.sr.SourceImageForMeasurement.from_source_image(source)] if source else None
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=(
                    _tracking(uid or study, "reviewer measurements")
                    if label is None
                    else _tracking(uid or study, label, "label")  # its own UID, whatever the text
                ),
                measurements=[
                    hd.sr.Measurement(
                        name=m.concept(),
                        value=m.value,
                        unit=CodedConcept(m.unit, "UCUM", m.unit),
                        method=_method(m),
                        referenced_images=references,
                    )
                    for m in measurements
                ],
                source_images=(
                    [hd.sr.SourceImageForMeasurementGroup.from_source_image(source)]
                    if source is not None
                    else None
                ),
            )
        )
    if not groups:  # TID 1500 needs one group: an empty one still names an instance
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(str(first.SOPInstanceUID), "no measurements"),
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(first)],
            )
        )
    return groups


def _tracking(uid: str, what: str, *entropy: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(
        uid=generate_uid(entropy_srcs=[uid, what, *entropy]), identifier=what[:64]
    )


def _method(measurement: ReportMeasurement) -> CodedConcept:
    key = (measurement.origin, measurement.decision)
    return CodedConcept(f"{key[0].value}-{key[1].value}", _PRIVATE, _METHODS[key])


def _evaluations(report: Report) -> list[hd.sr.ContentItem]:
    items: list[hd.sr.ContentItem] = []
    for name, text in (
        (FINDING, report.findings),
        (_IMPRESSION, report.impression),
        (RECOMMENDATION, report.recommendations),
    ):
        if text.strip():
            items.append(hd.sr.TextContentItem(name=name, value=text, relationship_type=_CONTAINS))
    items.append(
        hd.sr.CodeContentItem(
            name=_URGENCY,
            value=CodedConcept(report.urgency.value, _PRIVATE, report.urgency.value.title()),
            relationship_type=_CONTAINS,
        )
    )
    return items


# -- the readable summary ---------------------------------------------------------------


def summary_text(
    report: Report,
    *,
    reviewer: str,
    version: int,
    study_instance_uid: str | None = None,
    patient: str | None = None,
    published_at: str | None = None,
) -> str:
    """The report as plain text (UTF-8 when written), for people at the sites."""
    amends = f" (amends version {version - 1})" if version > 1 else ""
    lines = [f"usreview report, version {version}{amends}"]
    for label, value in (
        ("Study", study_instance_uid),
        ("Patient", patient),
        ("Examination", _EXAM_MEANINGS[report.exam_type]),
        ("Urgency", report.urgency.value.upper()),
        ("Reviewer", reviewer),
        ("Published", published_at),
    ):
        if value:
            lines.append(f"{label}: {value}")
    for title, text in (
        ("FINDINGS", report.findings),
        ("IMPRESSION", report.impression),
        ("RECOMMENDATIONS", report.recommendations),
    ):
        if text.strip():
            lines += ["", title, text.strip()]
    if report.measurements:
        lines += ["", "MEASUREMENTS"]
        for m in report.measurements:
            unit = "" if m.unit == "1" else f" {m.unit}"
            how = _METHODS[(m.origin, m.decision)]
            where = f"; instance {m.source_instance}" if m.source_instance else ""
            named = f" ({m.label})" if m.label else ""
            lines.append(f"- {m.concept().meaning}{named}: {m.value:g}{unit} ({how}{where})")
    if report.key_images:
        lines += ["", "KEY IMAGES"] + [f"- {uid}" for uid in report.key_images]
    if report.recipients:
        lines += ["", "Also sent to: " + ", ".join(report.recipients)]
    return "\n".join(lines) + "\n"
