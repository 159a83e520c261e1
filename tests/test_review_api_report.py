"""The report's pure part: validation naming the field, the SR, the text summary (no hub)."""

from __future__ import annotations

import copy
import datetime as dt
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from usreview.errors import InputError, ReportError
from usreview.processing.quantification.codes import CODES
from usreview.review.report import (
    ExamType,
    MeasurementOrigin,
    Report,
    Urgency,
    build_report_sr,
    summary_text,
)
from usreview.simulate import simulate


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    [path] = simulate("pw", tmp_path_factory.mktemp("pw"), seed=5)
    return pydicom.dcmread(path, stop_before_pixels=True)


def body(uid: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "exam_type": "vascular",
        "findings": "Plaque.",
        "impression": "Stenosis 50-69%.",
        "recommendations": "",
        "urgency": "urgent",
        "measurements": [
            {"name": "peak_systolic_velocity", "value": 182, "unit": "cm/s",
             "origin": "automatic", "decision": "corrected", "source_instance": uid},
            {"name": "plaque_length", "value": 7.5, "unit": "mm", "code": None},
        ],
        "key_images": [uid],
        "recipients": ["siteb"],
    }  # fmt: skip
    data.update(changes)
    return data


def test_a_valid_report_round_trips(source: Dataset) -> None:
    uid = str(source.SOPInstanceUID)
    report = Report.from_json(body(uid))
    assert (report.exam_type, report.urgency) == (ExamType.VASCULAR, Urgency.URGENT)
    psv, plaque = report.measurements
    assert psv.value == 182.0 and psv.origin is MeasurementOrigin.AUTOMATIC
    assert plaque.origin is MeasurementOrigin.REVIEWER  # the defaults
    assert psv.concept().value == CODES["peak_systolic_velocity"][0].value  # LOINC reused
    assert (plaque.concept().value, plaque.concept().scheme_designator) == (
        "plaque_length", "99USREVIEW"
    )  # fmt: skip
    assert Report.from_json(report.to_json()) == report
    assert report.referenced_instances == (uid,)
    minimal = Report.from_json({"exam_type": "echo", "impression": "Normal.", "urgency": "routine"})
    assert minimal.measurements == () and minimal.findings == "" and minimal.recipients == ()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"exam_type": "ct"}, "exam_type"),
        ({"impression": ""}, "impression"),
        ({"impression": "a\x00b"}, "impression"),
        ({"findings": "x" * 20_001}, "findings"),
        ({"urgency": "soon"}, "urgency"),
        ({"extra": 1}, "extra"),
        ({"measurements": {}}, "measurements"),
        ({"measurements": [1]}, "measurements[0]"),
        ({"measurements": [{"name": "x", "value": True, "unit": "mm"}]}, "measurements[0].value"),
        ({"measurements": [{"name": "x", "value": float("nan"), "unit": "mm"}]},
         "measurements[0].value"),
        ({"measurements": [{"name": "x", "value": 10**400, "unit": "mm"}]},
         "measurements[0].value"),
        ({"measurements": [{"name": "", "value": 1, "unit": "mm"}]}, "measurements[0].name"),
        ({"measurements": [{"name": "x", "value": 1}]}, "measurements[0].unit"),
        ({"measurements": [{"name": "x", "value": 1, "unit": "m m"}]}, "measurements[0].unit"),
        ({"measurements": [{"name": "x", "value": 1, "unit": "mm", "decision": "maybe"}]},
         "measurements[0].decision"),
        ({"measurements": [{"name": "x", "value": 1, "unit": "mm", "code": {"value": "1"}}]},
         "measurements[0].code.scheme"),
        ({"measurements": [{"name": "x", "value": 1, "unit": "mm",
                            "code": {"value": "1", "scheme": "L N", "meaning": "m"}}]},
         "measurements[0].code.scheme"),
        ({"measurements": [{"name": "x", "value": 1, "unit": "mm", "source_instance": "1.x"}]},
         "measurements[0].source_instance"),
        ({"measurements": [{"name": "x", "value": 1, "unit": "mm", "when": "now"}]},
         "measurements[0].when"),
        ({"key_images": "1.2.3"}, "key_images"),
        ({"key_images": ["1.2.x"]}, "key_images[0]"),
        ({"key_images": ["1.2"] * 101}, "key_images"),
        ({"recipients": ["../etc"]}, "recipients[0]"),
        ({"recipients": ["b", "b"]}, "recipients[1]"),
    ],
)  # fmt: skip
def test_every_field_is_validated_and_named(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ReportError) as raised:
        Report.from_json(body("1.2.3", **changes))
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")
    assert isinstance(raised.value, InputError)


def test_not_an_object_and_missing_fields() -> None:
    for data, field in (([], "report"), ({"exam_type": "echo", "urgency": "routine"},
                                         "impression")):  # fmt: skip
        with pytest.raises(ReportError) as raised:
            Report.from_json(data)
        assert raised.value.field == field


def test_the_sr_is_a_verified_tid_1500_report(source: Dataset, tmp_path: Path) -> None:
    uid = str(source.SOPInstanceUID)
    report = Report.from_json(body(uid))
    sr = build_report_sr(
        report,
        [source],
        reviewer="dr-x",
        organization="usreview hub",
        sop_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        version=1,
    )
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == (
        "VERIFIED", "COMPLETE", "FINAL"
    )  # fmt: skip
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.PatientID == source.PatientID and sr.StudyInstanceUID == source.StudyInstanceUID
    assert "PredecessorDocumentsSequence" not in sr
    with pytest.raises(ReportError, match="not among the sources"):
        build_report_sr(
            Report.from_json(body("1.2.3.4")),
            [source],
            reviewer="dr-x",
            organization="o",
            sop_instance_uid=generate_uid(),
            series_instance_uid=generate_uid(),
            version=1,
        )
    previous = Dataset()
    previous.StudyInstanceUID = sr.StudyInstanceUID
    previous.SeriesInstanceUID = sr.SeriesInstanceUID
    previous.SOPClassUID = sr.SOPClassUID
    previous.SOPInstanceUID = sr.SOPInstanceUID
    amendment = build_report_sr(
        Report.from_json(body(uid, measurements=[], key_images=[])),
        [source],
        reviewer="Doe^Jane",
        organization="usreview hub",
        sop_instance_uid=generate_uid(),
        series_instance_uid=sr.SeriesInstanceUID,
        version=2,
        previous=previous,
    )
    [series] = amendment.PredecessorDocumentsSequence[0].ReferencedSeriesSequence
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
    assert amendment.VerifyingObserverSequence[0].VerifyingObserverName == "Doe^Jane"
    for name, document in (("first", sr), ("amendment", amendment)):
        document.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)


@pytest.mark.external
def test_dciodvfy_accepts_the_report_srs(source: Dataset, tmp_path: Path) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy missing: make test installs dicom3tools"
    test_the_sr_is_a_verified_tid_1500_report(source, tmp_path)
    for name in ("first", "amendment"):
        run = subprocess.run(
            ["dciodvfy", str(tmp_path / f"{name}.dcm")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = run.stdout + run.stderr
        assert [line for line in output.splitlines() if line.startswith("Error")] == [], output
        assert "ComprehensiveSR" in output.split()


def test_the_summary_is_plain_text_for_people(source: Dataset) -> None:
    report = Report.from_json(body(str(source.SOPInstanceUID), findings="Évaluation."))
    text = summary_text(report, reviewer="dr-x", version=2, patient="DOE^JANE")
    assert text.startswith("usreview report, version 2 (amends version 1)\n")
    assert "Urgency: URGENT" in text and "Patient: DOE^JANE" in text
    assert "FINDINGS\nÉvaluation." in text and "RECOMMENDATIONS" not in text
    assert "- Peak Systolic Velocity: 182 cm/s (automatic, corrected by the reviewer;" in text
    assert "- plaque_length: 7.5 mm (measured by the reviewer)" in text
    assert "Also sent to: siteb" in text
    text.encode("utf-8")


def _walk(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from _walk(item)


def _code(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _report_sr(report: Report, sources: list[Dataset], **changes: Any) -> Dataset:
    """The SR written and read back, as a site's PACS gets it."""
    arguments: dict[str, Any] = {
        "reviewer": "dr-x",
        "organization": "usreview hub",
        "sop_instance_uid": generate_uid(),
        "series_instance_uid": generate_uid(),
        "version": 1,
        **changes,
    }
    buffer = io.BytesIO()
    build_report_sr(report, sources, **arguments).save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("charset", [None, "ISO_IR 100"], ids=["undeclared", "latin-1"])
def test_non_ascii_text_survives_whatever_the_source_declares(
    source: Dataset, charset: str | None
) -> None:
    """UTF-8 (ISO_IR 192): not the source's Latin-1 ("≥" -> "?"), nor undeclared bytes."""
    header = copy.deepcopy(source)
    if charset is None:
        if "SpecificCharacterSet" in header:
            del header.SpecificCharacterSet
    else:
        header.SpecificCharacterSet = charset
    impression = "Sténose ICA ≥ 125 cm/s; 狭窄"
    report = Report.from_json(body(str(source.SOPInstanceUID), impression=impression))
    sr = _report_sr(report, [header], reviewer="José", organization="Hôpital")
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "José^"
    assert sr.VerifyingObserverSequence[0].VerifyingOrganization == "Hôpital"
    assert impression in {str(i.TextValue) for i in _walk(sr) if i.ValueType == "TEXT"}


def _containers(sr: Dataset) -> dict[tuple[str, str], Dataset]:
    return {_code(i): i for i in sr.ContentSequence if i.ValueType == "CONTAINER"}


def test_qualitative_evaluations_have_the_tid_1500_code(source: Dataset) -> None:
    """(C0034375, UMLS), as the automatic SRs; 126010 is "Imaging Measurements"."""
    sr = _report_sr(Report.from_json(body(str(source.SOPInstanceUID))), [source])
    containers = _containers(sr)
    assert containers[("126010", "DCM")].ConceptNameCodeSequence[0].CodeMeaning == (
        "Imaging Measurements"
    )
    qualitative = containers[("C0034375", "UMLS")]
    assert qualitative.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
    assert {_code(i)[0] for i in qualitative.ContentSequence} == {
        "121071", "121073", "urgency"
    }  # fmt: skip


def test_the_private_scheme_is_declared(source: Dataset) -> None:
    sr = _report_sr(Report.from_json(body(str(source.SOPInstanceUID))), [source])
    [declared] = sr.CodingSchemeIdentificationSequence
    assert declared.CodingSchemeDesignator == "99USREVIEW"
    assert declared.CodingSchemeName and declared.CodingSchemeResponsibleOrganization


def test_key_images_are_the_image_library(source: Dataset) -> None:
    """TID 1600 Image Library, before the measurements; Qualitative Evaluations: CODE, TEXT."""
    uid = str(source.SOPInstanceUID)
    sr = _report_sr(Report.from_json(body(uid)), [source])
    containers = _containers(sr)
    assert list(containers) == [("111028", "DCM"), ("126010", "DCM"), ("C0034375", "UMLS")]
    qualitative = containers[("C0034375", "UMLS")]
    assert {i.ValueType for i in qualitative.ContentSequence} == {"TEXT", "CODE"}
    images = [i for i in _walk(containers[("111028", "DCM")]) if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [uid]
    assert hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
    sr = _report_sr(Report.from_json(body(uid, key_images=[])), [source])
    assert list(_containers(sr)) == [("126010", "DCM"), ("C0034375", "UMLS")]  # no library


def _tracking_uids(sr: Dataset) -> dict[str, list[str]]:
    """Tracking Identifier -> its Tracking Unique Identifiers."""
    uids: dict[str, list[str]] = {}
    for group in _walk(sr):
        if group.ValueType != "CONTAINER" or _code(group) != ("125007", "DCM"):
            continue
        children = {_code(c): c for c in group.ContentSequence}
        name = str(children[("112039", "DCM")].TextValue)
        uids.setdefault(name, []).append(str(children[("112040", "DCM")].UID))
    return uids


def test_study_level_measurements_are_tracked_per_study(tmp_path: Path) -> None:
    """No source instance: the study's UID, not a constant, makes the Tracking UID."""
    sources = []
    for n in range(2):
        [path] = simulate("pw", tmp_path / str(n), seed=5 + n)
        sources.append(pydicom.dcmread(path, stop_before_pixels=True))
    assert sources[0].StudyInstanceUID != sources[1].StudyInstanceUID
    measurements = [
        {"name": "plaque_length", "value": 7.5, "unit": "mm"},
        {"name": "plaque_width", "value": 2.5, "unit": "mm", "label": "Plaque"},
    ]

    def uids(header: Dataset, **changes: Any) -> dict[str, list[str]]:
        report = Report.from_json(
            body(str(header.SOPInstanceUID), measurements=measurements, **changes)
        )
        return _tracking_uids(_report_sr(report, [header]))

    first, other = uids(sources[0]), uids(sources[1])
    assert set(first) == {"reviewer measurements", "Plaque"}
    for name in first:
        assert first[name] != other[name], name  # another patient's study, another UID
    assert uids(sources[0], impression="Amended.", key_images=[]) == first  # stable


@pytest.mark.parametrize("offset", [None, "-0930"], ids=["hub", "source"])
def test_the_report_is_dated_in_local_time_with_its_offset(
    source: Dataset, offset: str | None
) -> None:
    """The report SR was dated in the hub's zone with no offset, whatever the site's.

    As the automatic SRs: in the source's valid offset, which the report carries; its
    Verification DateTime carries the offset it is in.
    """
    first = copy.deepcopy(source)
    if offset is not None:
        first.TimezoneOffsetFromUTC = offset
    uid = str(first.SOPInstanceUID)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    sr = _report_sr(Report.from_json(body(uid)), [first])
    after = dt.datetime.now(dt.UTC)
    assert sr.get("TimezoneOffsetFromUTC") == offset
    verified = dt.datetime.strptime(
        str(sr.VerifyingObserverSequence[0].VerificationDateTime), "%Y%m%d%H%M%S%z"
    )
    assert before <= verified <= after
    zone = verified.strftime("%z")
    assert zone == (offset or dt.datetime.now().astimezone().strftime("%z"))
    content = dt.datetime.strptime(f"{sr.ContentDate}{sr.ContentTime}{zone}", "%Y%m%d%H%M%S%z")
    assert before <= content <= after
