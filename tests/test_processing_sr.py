"""The automatic SR's concepts: standard codes, private schemes declared, dciodvfy satisfied.

Findings, recommendations and failures are coded with DCM concepts (Comment, Table of Values
and its Citation, Failed Analyses) in a "Qualitative Evaluations" container (C0034375, UMLS);
the M-mode excursions are "Excursion Distance" (DCM) with their finding sites (SCT). A
quantity that a processor codes with the private scheme ``99USREVIEW`` still works, and the
scheme is declared in the Coding Scheme Identification Sequence (0008,0110).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from usreview.dicom import read
from usreview.processing import (
    Code,
    CodingScheme,
    Finding,
    Output,
    ProcessorResult,
    Provenance,
    Quantity,
    ResultStatus,
    run_pipeline,
)
from usreview.processing.execution import execute_file
from usreview.processing.recommendations.study import evaluate_study
from usreview.processing.sr import build_sr
from usreview.processing.study_results import study_documents
from usreview.simulate import simulate


def _items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from _items(item)


def _concept(item: Dataset) -> tuple[str, str, str]:
    (code,) = item.ConceptNameCodeSequence
    return str(code.CodeValue), str(code.CodingSchemeDesignator), str(code.CodeMeaning)


def _designators(ds: Dataset) -> set[str]:
    return {
        str(element.value)
        for element in ds.iterall()
        if element.keyword == "CodingSchemeDesignator"
    }


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Automatic SRs written to files: PW (finding, recommendation), M-mode, a failure."""
    folder = tmp_path_factory.mktemp("sr")
    out = {}
    for kind, params in (("pw", {"psv_cm_s": 260, "vessel": "ica", "side": "left"}), ("mmode", {})):
        source = simulate(kind, folder / kind, seed=3, snr_db=20.0, **params)[0]
        outputs = execute_file(str(source))
        assert outputs.sr is not None, kind
        out[kind] = folder / f"{kind}.sr.dcm"
        out[kind].write_bytes(outputs.sr)
    source = simulate("pw", folder / "failed", seed=4)[0]
    results = run_pipeline(read(source))
    failed = ProcessorResult(
        Provenance("broken", "0.1", {}, "1.2.3"),
        ResultStatus.FAILED,
        reason="applying processor broken to instance 1.2.3: ZeroDivisionError",
    )
    document = build_sr(
        pydicom.dcmread(source, stop_before_pixels=True),
        [*results, failed],
        sop_instance_uid=pydicom.uid.generate_uid(),
        series_instance_uid=pydicom.uid.generate_uid(),
    )
    out["failed"] = folder / "failed.sr.dcm"
    document.save_as(out["failed"], enforce_file_format=True)
    return out


def test_built_in_results_use_standard_codes_only(documents: dict[str, Path]) -> None:
    for name, path in documents.items():
        ds = pydicom.dcmread(path)
        assert _designators(ds) <= {"DCM", "LN", "SCT", "UCUM", "UMLS", "RFC5646"}, name
        assert "CodingSchemeIdentificationSequence" not in ds, name  # nothing private


def test_qualitative_evaluations_hold_findings_recommendations_and_failures(
    documents: dict[str, Path],
) -> None:
    ds = pydicom.dcmread(documents["pw"])
    [container] = [i for i in ds.ContentSequence if i.ValueType == "CONTAINER"][-1:]
    assert _concept(container) == ("C0034375", "UMLS", "Qualitative Evaluations")
    concepts: dict[tuple[str, str, str], list[Dataset]] = {}
    for item in _items(container):
        concepts.setdefault(_concept(item), []).append(item)
    assert ("121071", "DCM", "Finding") in concepts
    [evidence, *_] = concepts[("121106", "DCM", "Comment")]
    assert evidence.RelationshipType == "INFERRED FROM" and "signal" in evidence.TextValue
    rules = [i.TextValue for i in concepts[("121424", "DCM", "Table of Values")]]
    assert any(r.startswith("sru_ica_stenosis_psv: ICA PSV < 125 cm/s") for r in rules)
    citations = [i.TextValue for i in concepts[("121422", "DCM", "Table of Values Citation")]]
    assert len(citations) == len(rules) and any("Radiology 2003" in c for c in citations)
    assert ("11726-7", "LN", "Peak Systolic Velocity") in concepts  # the rule's evidence
    failed = pydicom.dcmread(documents["failed"])
    [failure] = [i for i in _items(failed) if _concept(i)[0] == "111024"]
    assert _concept(failure) == ("111024", "DCM", "Failed Analyses")
    assert "ZeroDivisionError" in failure.TextValue


def test_mmode_excursions_are_excursion_distances_at_their_sites(
    documents: dict[str, Path],
) -> None:
    ds = pydicom.dcmread(documents["mmode"])
    excursions = [i for i in _items(ds) if i.ValueType == "NUM" and _concept(i)[0] == "125327"]
    sites = []
    for item in excursions:
        assert _concept(item) == ("125327", "DCM", "Excursion Distance")
        [site] = [c for c in item.ContentSequence if _concept(c)[2] == "Finding Site"]
        modifiers = [_concept(c)[2] for c in site.get("ContentSequence") or []]
        sites.append((site.ConceptCodeSequence[0].CodeMeaning, modifiers))
    assert sites == [
        ("Interventricular septum", []),
        ("Left ventricle", ["Topographical modifier"]),
    ]


def test_a_private_code_is_declared_in_the_coding_scheme_identification(tmp_path: Path) -> None:
    source = simulate("bmode", tmp_path, seed=1, rows=200, columns=240)[0]
    private = Code("x-1", CodingScheme.USREVIEW, "Test value")
    result = ProcessorResult(
        Provenance("third_party", "1.0", {}, "1.2.3"),
        ResultStatus.DONE,
        Output(quantities=(Quantity("x", private, 2.0, "mm"),)),
    )
    document = build_sr(
        pydicom.dcmread(source, stop_before_pixels=True),
        [result],
        sop_instance_uid=pydicom.uid.generate_uid(),
        series_instance_uid=pydicom.uid.generate_uid(),
    )
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    ds = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    [declared] = ds.CodingSchemeIdentificationSequence
    assert declared.CodingSchemeDesignator == "99USREVIEW"
    assert declared.CodingSchemeName and declared.CodingSchemeResponsibleOrganization
    with pytest.raises(ValueError, match="finding_site"):
        build_sr(
            pydicom.dcmread(source, stop_before_pixels=True),
            [
                ProcessorResult(
                    result.provenance,
                    ResultStatus.DONE,
                    Output(
                        quantities=(
                            Quantity("x", private, 2.0, "mm", details={"finding_site": "septum"}),
                        )
                    ),
                )
            ],
            sop_instance_uid=pydicom.uid.generate_uid(),
            series_instance_uid=pydicom.uid.generate_uid(),
        )


@pytest.mark.external
def test_dciodvfy_finds_no_error_and_no_coding_scheme_warning(
    documents: dict[str, Path],
) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy missing: make test installs dicom3tools"
    for name, path in documents.items():
        run = subprocess.run(
            ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        report = run.stdout + run.stderr
        assert "ComprehensiveSR" in report.split(), report
        lines = report.splitlines()
        assert [line for line in lines if line.startswith("Error")] == [], (name, report)
        schemes = [line for line in lines if "Coding Scheme" in line or "99USREVIEW" in line]
        assert schemes == [], (name, report)


@pytest.mark.parametrize(
    ("offset", "kept"),
    [(None, False), ("+0130", True), ("-0930", True), ("+01:30", False), ("+1500", False)],
    ids=["hub", "source", "negative", "colon", "out-of-range"],
)
def test_sr_dates_and_times_are_local_with_the_offset_they_are_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset: str | None, kept: bool
) -> None:
    """The SR carried no Timezone Offset From UTC, its Content Date/Time in the hub's zone.

    As the derived images: in the source's valid offset (0008,0201), which the SR carries;
    else in the hub's zone, no offset written (the copied study times' zone is unknown).
    """
    path = simulate("pw", tmp_path, seed=2, rows=240, columns=320)[0]
    if offset is not None:
        source = pydicom.dcmread(path)
        source.TimezoneOffsetFromUTC = offset
        source.save_as(path)
    monkeypatch.setenv("TZ", "America/New_York")  # the hub's zone, not UTC
    time.tzset()
    try:
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        outputs = execute_file(str(path))
        after = dt.datetime.now(dt.UTC)
        expected = offset if kept else dt.datetime.now().astimezone().strftime("%z")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert outputs.sr is not None and expected not in ("+0000", None)
    written = tmp_path / "sr.dcm"
    written.write_bytes(outputs.sr)
    ds = pydicom.dcmread(written)
    assert ds.get("TimezoneOffsetFromUTC") == (offset if kept else None)
    for prefix in ("InstanceCreation", "Content"):
        moment = dt.datetime.strptime(
            f"{ds.get(prefix + 'Date')}{ds.get(prefix + 'Time')}{expected}", "%Y%m%d%H%M%S%z"
        )
        assert before <= moment <= after, prefix
    if kept and shutil.which("dciodvfy"):
        run = subprocess.run(
            ["dciodvfy", str(written)], capture_output=True, text=True, timeout=60, check=False
        )
        report = run.stdout + run.stderr
        assert [line for line in report.splitlines() if line.startswith("Error")] == [], report


@pytest.mark.parametrize("charset", [None, "ISO_IR 100"], ids=["undeclared", "latin-1"])
def test_non_ascii_text_survives_whatever_the_source_declares(
    tmp_path: Path, charset: str | None
) -> None:
    """The SR is UTF-8 (ISO_IR 192), not in the source's character set nor undeclared."""
    path = simulate("bmode", tmp_path, seed=1, rows=200, columns=240)[0]
    source = pydicom.dcmread(path, stop_before_pixels=True)
    source.PatientName = "Ibáñez^José"
    if charset is None:
        if "SpecificCharacterSet" in source:
            del source.SpecificCharacterSet
    else:
        source.SpecificCharacterSet = charset
    text = "ICA PSV ≥ 125 cm/s; 狭窄 (stenosis)"
    result = ProcessorResult(
        Provenance("third_party", "1.0", {}, str(source.SOPInstanceUID)),
        ResultStatus.DONE,
        Output(findings=(Finding("x", text, {"note": "µ-calcification"}),)),
    )
    document = build_sr(
        source,
        [result],
        sop_instance_uid=pydicom.uid.generate_uid(),
        series_instance_uid=pydicom.uid.generate_uid(),
    )
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    assert "José".encode() in buffer.getvalue()  # UTF-8 bytes, not Latin-1 ones
    ds = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Ibáñez^José"
    texts = {str(i.TextValue) for i in _items(ds) if i.ValueType == "TEXT"}
    assert text in texts and "note: µ-calcification" in texts


def test_study_sr_evidence_values_name_their_vessel_side_and_spectrum(tmp_path: Path) -> None:
    """TID 300 evidence: each value with its finding site and the instance it comes from."""
    paths = {
        vessel: simulate(
            "pw", tmp_path / vessel, seed=21, study="eval", vessel=vessel, side="left",
            psv_cm_s=psv, edv_cm_s=edv,
        )[0]
        for vessel, psv, edv in (("cca", 60.0, 15.0), ("ica", 180.0, 60.0))
    }  # fmt: skip
    summaries, uids = {}, {}
    for vessel, path in paths.items():
        outputs = execute_file(str(path))
        assert outputs.summary is not None
        summaries[outputs.sop_instance_uid] = json.loads(outputs.summary)
        uids[vessel] = outputs.sop_instance_uid
    headers = {
        str(h.SOPInstanceUID): h
        for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths.values())
    }
    study = str(next(iter(headers.values())).StudyInstanceUID)
    evaluations = evaluate_study(summaries)
    _, data, _ = study_documents(study, evaluations, headers)
    written = tmp_path / "study.sr.dcm"
    written.write_bytes(data)
    ds = pydicom.dcmread(written)
    [recommendation] = [i for i in _items(ds) if _concept(i)[0] == "121075"]
    values = []
    for item in recommendation.ContentSequence:
        if item.ValueType != "NUM":
            continue
        assert item.RelationshipType == "INFERRED FROM"
        # highdicom reads it back as a TID 300 measurement
        measurement = hd.sr.Measurement.from_sequence([hd.sr.NumContentItem.from_dataset(item)])
        [site] = measurement.finding_sites
        assert site.laterality is not None
        references = [r.referenced_sop_instance_uid for r in measurement.referenced_images]
        values.append(
            (measurement.name.meaning, site.value.meaning, site.laterality.meaning, references)
        )
    assert values == [
        ("Peak Systolic Velocity", "Internal carotid artery", "Left", [uids["ica"]]),
        ("End Diastolic Velocity", "Internal carotid artery", "Left", [uids["ica"]]),
        ("Peak Systolic Velocity", "Common carotid artery", "Left", [uids["cca"]]),
        ("ICA/CCA velocity ratio", "Internal carotid artery", "Left", []),
    ]
    if shutil.which("dsrdump"):
        run = subprocess.run(
            ["dsrdump", str(written)], capture_output=True, text=True, timeout=60, check=False
        )
        assert run.returncode == 0 and "E:" not in run.stderr, run.stderr
    # Strict when writing: an instance the details name must be among the sources.
    [evaluation] = evaluations
    result = ProcessorResult(
        Provenance("rule", "1", {}, uids["ica"]),
        ResultStatus.DONE,
        Output(recommendations=(evaluation.recommendation,)),
    )
    with pytest.raises(ValueError, match="not among the source and evidence instances"):
        build_sr(
            headers[uids["ica"]],
            [result],
            sop_instance_uid=pydicom.uid.generate_uid(),
            series_instance_uid=pydicom.uid.generate_uid(),
        )
