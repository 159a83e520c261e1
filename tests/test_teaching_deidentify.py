"""De-identified teaching copies: no identifying value of the source survives.

The simulated instances get identifying values in the attributes PS3.15 Table E.1-1
names (top level, nested sequences, private tags) and text burned into the pixels
outside the ultrasound regions; the copy is searched element by element, byte by byte,
and pixel by pixel.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from tests.conftest import real_file
from usreview.dicom import read, read_regions
from usreview.simulate import simulate
from usreview.teaching import (
    DeidentificationError,
    UidMap,
    deidentify,
    region_mask,
    scrub_text,
)

PHI = {
    "PatientName": "DOE^JANE^QUINCY",
    "PatientID": "MRN-998877",
    "PatientBirthDate": "19800214",
    "PatientAddress": "12 Elm Street Springfield",
    "AccessionNumber": "ACC-55443",
    "InstitutionName": "Saint Elsewhere Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "OperatorsName": "RATCHED^MILDRED",
    "StationName": "USROOM7",
    "DeviceSerialNumber": "SN-000111",
    "StudyID": "STUDY-4242",
    "StudyDate": "20240307",
    "StudyTime": "101112",
    "ContentDate": "20240308",
    "ImageComments": "Mrs Doe came late",
    "StudyDescription": "Carotid Doe follow-up",
}
NESTED = {"OTHER-ID-1234", "RP-777", "SPS-888", "Dr PRIVATE Person"}


def _with_phi(path: Path, burn: bool = True) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "OTHER-ID-1234", "HOSPX"
    ds.OtherPatientIDsSequence = Sequence([other])
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = "RP-777", "SPS-888"
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    referenced.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    request.ReferencedStudySequence = Sequence([referenced])
    ds.RequestAttributesSequence = Sequence([request])
    ds.private_block(0x0011, "ACME", create=True).add_new(0x01, "LO", "Dr PRIVATE Person")
    region = ds.SequenceOfUltrasoundRegions[0]  # a private element inside a region item
    region.private_block(0x0013, "ACME", create=True).add_new(0x01, "LO", "Dr PRIVATE Person")
    if burn:
        _burn(ds)
    out = path.with_name(path.stem + "-phi.dcm")
    ds.save_as(out, enforce_file_format=True)
    return out


def _burn(ds: Dataset) -> None:
    """Write a bright block (the 'burned-in name') everywhere outside the regions."""
    pixels = ds.pixel_array.copy()
    inside = region_mask(ds.Rows, ds.Columns, read_regions(ds))
    if pixels.ndim == 2 or (pixels.ndim == 3 and "NumberOfFrames" not in ds):
        pixels[~inside] = 200
    else:
        pixels[:, ~inside] = 200
    ds.PixelData = pixels.tobytes()


def _strings(ds: Dataset) -> list[str]:
    found: list[str] = []
    for element in ds.iterall():
        if element.tag == 0x7FE00010:
            continue
        value = element.value
        values = (
            list(value)
            if isinstance(value, list | tuple | pydicom.multival.MultiValue)
            else [value]
        )
        for v in values:
            if isinstance(v, bytes):
                found.append(v.decode("latin-1"))
            elif not isinstance(v, Sequence | Dataset):
                found.append(str(v))
    return found


@pytest.fixture(scope="module", params=["bmode", "color", "cine"])
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp(request.param)
    [path] = simulate(request.param, folder, seed=1)
    source = _with_phi(path)
    copy = deidentify(read(source), UidMap(), label="TEACHING-1")
    out = folder / "copy.dcm"
    copy.save_as(out, enforce_file_format=True)
    return source, out


def test_no_identifying_value_survives_anywhere(case: tuple[Path, Path]) -> None:
    source_path, copy_path = case
    source = pydicom.dcmread(source_path)
    secrets = {*PHI.values(), *NESTED, "DOE", "JANE", "QUINCY", "HOUSE", "RATCHED"}
    uids = {str(e.value) for e in source.iterall() if e.VR == "UI"} - {
        str(source.SOPClassUID),
        "1.2.840.10008.3.1.2.3.1",
    }
    assert len(uids) >= 3  # study, series, instance (at least)
    copy = pydicom.dcmread(copy_path)
    texts = " ".join(_strings(copy)).upper()
    for secret in secrets | uids:
        assert secret.upper() not in texts, secret
    raw = copy_path.read_bytes()
    raw = raw[: raw.rindex(b"\xe0\x7f\x10\x00")].upper()  # every byte before the pixels
    for secret in secrets | uids:
        assert secret.upper().encode() not in raw, secret
    assert not any(e.tag.is_private for e in copy.iterall())
    assert all(e.VR not in ("DA", "DT", "TM") or not e.value for e in copy.iterall())
    assert copy.PatientIdentityRemoved == "YES"
    assert copy.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert any("outside the ultrasound regions" in m for m in copy.DeidentificationMethod)
    assert copy.LongitudinalTemporalInformationModified == "REMOVED"


def test_pixels_outside_the_regions_are_blank_and_inside_kept(case: tuple[Path, Path]) -> None:
    source_path, copy_path = case
    source, copy = read(source_path), read(copy_path)
    assert copy.regions == source.regions and copy.kinds == source.kinds
    inside = region_mask(source.pixels.rows, source.pixels.columns, source.regions)
    before, after = source.pixels.frames(), copy.pixels.frames()
    assert after.shape == before.shape
    assert (before[:, ~inside] == 200).all()  # the burned-in text was there
    assert int(np.count_nonzero(after[:, ~inside])) == 0
    np.testing.assert_array_equal(after[:, inside], before[:, inside])


def test_uids_are_new_and_consistent_within_a_case(tmp_path: Path) -> None:
    [path] = simulate("bmode", tmp_path, seed=2)
    first = _with_phi(path, burn=False)
    second_ds = pydicom.dcmread(first)
    second_ds.SOPInstanceUID = generate_uid()
    second = tmp_path / "second.dcm"
    second_ds.save_as(second, enforce_file_format=True)
    uids = UidMap()
    a = deidentify(read(first), uids, label="T")
    b = deidentify(read(second), uids, label="T")
    assert a.StudyInstanceUID == b.StudyInstanceUID != second_ds.StudyInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != second_ds.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert str(a.SOPClassUID) == str(second_ds.SOPClassUID)  # a standard UID is kept
    other = deidentify(read(first), UidMap(), label="T")  # another case: unlinkable
    assert other.StudyInstanceUID != a.StudyInstanceUID


def test_an_instance_without_regions_is_refused(tmp_path: Path) -> None:
    [path] = simulate("bmode", tmp_path, seed=3)
    ds = pydicom.dcmread(path)
    del ds.SequenceOfUltrasoundRegions
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, enforce_file_format=True)
    with pytest.raises(DeidentificationError, match="Regions"):
        deidentify(read(bare), UidMap(), label="T")


def test_the_report_text_loses_names_and_dates() -> None:
    text = (
        "Mrs Jane Doe (MRN-998877), seen 2024-03-07 and on 7 March 2024: plaque at the "
        "left ICA bulb, 12/03/2024 follow-up; Dr House agrees."
    )
    cleaned = scrub_text(text, ["DOE^JANE", "MRN-998877", "HOUSE^GREGORY"])
    for gone in ("Jane", "Doe", "MRN-998877", "2024", "March", "House"):
        assert gone.lower() not in cleaned.lower(), cleaned
    assert "plaque at the left ICA bulb" in cleaned


@pytest.mark.parametrize(
    ("typed", "gone"),
    [
        ("seen on 14/03, again 03/14", ["14/03", "03/14"]),
        ("scanned 14 March, then March 14th and the 2nd of May", ["14", "March", "2nd", "May"]),
        ("first seen in March 2024, then 03/2024 and 2024-03", ["March", "03/2024", "2024-03"]),
        (
            "MRN P-1234, ID: 12345678, accession no. A-77, MR# 00123",
            ["1234", "12345678", "A-77", "00123"],
        ),
        ("NHS 943 476 5919, chart 55667, patient 1234567", ["943", "5919", "55667", "1234567"]),
        (
            "patient ID 654321, record 123456, ID no 12345, acc 889912",
            ["654321", "123456", "12345", "889912"],
        ),
        ("seen on march 14, again on 3 march", ["14", "3 march"]),
        ("call 555-123-4567 or (020) 794-6095, jane.doe@example.org", ["4567", "6095", "example"]),
    ],
)
def test_identifiers_the_header_does_not_hold_are_removed(typed: str, gone: list[str]) -> None:
    """A reviewer may type a day, a month, a record number the header does not hold."""
    cleaned = scrub_text(typed, [])
    for part in gone:
        assert part.lower() not in cleaned.lower(), cleaned


def test_clinical_numbers_stay() -> None:
    text = (
        "Plaque 3.5 cm, ID 3.2 mm, ID 12 mm; 10-12 weeks; grade 2/4 murmur; segment 4/5; "
        "BP 120/80; 60/40 split; PSV 120 150 180 cm/s; RI 0.68; VTI 34.6 cm; HR 71/min; "
        "1/3 of the wall; LVIDd 47 mm; since 2019; recorded 3 times; ID cards seen; "
        "Acc 250 cm/s2; ID 120 mm; record 140 bpm."
    )
    assert scrub_text(text, []) == text


@pytest.mark.external
def test_dciodvfy_finds_no_error_in_a_copy(case: tuple[Path, Path]) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy missing: make test installs dicom3tools"
    run = subprocess.run(
        ["dciodvfy", str(case[1])], capture_output=True, text=True, timeout=60, check=False
    )
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def _run(path: Path) -> tuple[list[str], list[Any]]:
    """The rules' recommendations and the Doppler quantities' finding sites for ``path``."""
    from usreview.processing import run_pipeline

    results = {r.provenance.processor: r for r in run_pipeline(read(path))}
    rules = [r.rule for r in results["vascular_rules"].output.recommendations]
    sites = [q.details.get("finding_site") for q in results["doppler_indices"].output.quantities]
    return rules, sites


@pytest.mark.parametrize(("vessel", "side"), [("renal", "right"), ("ica", "left")])
def test_the_copy_keeps_the_vessel_and_side_the_rules_read(
    tmp_path: Path, vessel: str, side: str
) -> None:
    """A renal artery copy lost its vessel and was graded as an ICA."""
    [path] = simulate("pw", tmp_path, seed=4, vessel=vessel, side=side)
    copy = tmp_path / "copy.dcm"
    deidentify(read(path), UidMap(), label="T").save_as(copy, enforce_file_format=True)
    rules, sites = _run(path)
    assert sites and all(site["location"]["meaning"] for site in sites)
    assert _run(copy) == (rules, sites)
    assert ("sru_ica_stenosis_psv" in rules) == (vessel == "ica")
    assert pydicom.dcmread(copy).ImageLaterality == ("R" if side == "right" else "L")


def test_the_coded_anatomy_keeps_plain_codes_only(tmp_path: Path) -> None:
    [path] = simulate("pw", tmp_path, seed=5, vessel="ica", side="left")
    ds = pydicom.dcmread(_with_phi(path, burn=False))
    region = ds.AnatomicRegionSequence[0]
    region.ContextIdentifier, region.CodingSchemeVersion = "4031", "20240101"
    region.private_block(0x0011, "ACME", create=True).add_new(0x01, "LO", "Dr PRIVATE Person")
    named = Dataset()  # a code meaning a person typed: not a plain meaning, dropped
    named.CodeValue, named.CodingSchemeDesignator = "7771000", "SCT"
    named.CodeMeaning = "Left (DOE JANE)"
    dated = Dataset()
    dated.CodeValue, dated.CodingSchemeDesignator, dated.CodeMeaning = "1", "99X", "07/03/2024"
    region.AnatomicRegionModifierSequence.extend([named, dated])
    source = tmp_path / "coded.dcm"
    ds.save_as(source, enforce_file_format=True)
    copy = deidentify(read(source), UidMap(), label="T")
    [kept] = copy.AnatomicRegionSequence
    assert {e.keyword for e in kept} == {
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "AnatomicRegionModifierSequence",
    }
    assert (kept.CodeValue, kept.CodeMeaning) == ("86117002", "Internal carotid artery")
    [left] = kept.AnatomicRegionModifierSequence
    assert {e.keyword for e in left} == {"CodeValue", "CodingSchemeDesignator", "CodeMeaning"}
    assert (left.CodeValue, left.CodeMeaning) == ("7771000", "Left")


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # ALOKA's image type
def test_a_segmented_palette_copy_displays_like_the_original(tmp_path: Path) -> None:
    """ALOKA's 16-bit segmented palette: the copy was MONOCHROME2, its green markers grey."""
    source = read(real_file("pydicom-data__gdcm-US-ALOKA-16.dcm"))
    out = tmp_path / "copy.dcm"
    deidentify(source, UidMap(), label="T").save_as(out, enforce_file_format=True)
    copy = read(out)
    assert copy.photometric_interpretation == "PALETTE COLOR"
    inside = region_mask(source.rows, source.columns, source.regions)
    before, after = source.display_frame(), copy.display_frame()
    assert after.shape == before.shape == (source.rows, source.columns, 3)
    coloured = np.ptp(before[inside].astype(int), axis=-1) > 30
    assert coloured.sum() > 100  # the colour markers are inside the regions
    np.testing.assert_array_equal(after[inside], before[inside])


@pytest.mark.parametrize("kind", ["bmode", "color"])
def test_no_palette_attribute_is_left_without_its_palette(tmp_path: Path, kind: str) -> None:
    """A grey or RGB copy of a source with palette tables (a supplemental palette, or a
    segmented one the copy once lost) has no orphan descriptor or table."""
    [path] = simulate(kind, tmp_path, seed=6)
    ds = pydicom.dcmread(path)
    for colour in ("Red", "Green", "Blue"):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, 8])
        ds.add_new(f"Segmented{colour}PaletteColorLookupTableData", "OW", bytes([0, 1, 0, 0]))
    source = tmp_path / "palette.dcm"
    ds.save_as(source, enforce_file_format=True)
    copy = deidentify(read(source), UidMap(), label="T")
    assert copy.PhotometricInterpretation == ("RGB" if kind == "color" else "MONOCHROME2")
    assert not [e.keyword for e in copy if "PaletteColorLookupTable" in e.keyword]


def _graded(path: Path) -> tuple[list[tuple[str, str]], list[str], str]:
    """The vascular rules' (rule, category) and finding codes for ``path``, and their text."""
    from usreview.processing import run_pipeline

    [rules] = [r for r in run_pipeline(read(path)) if r.provenance.processor == "vascular_rules"]
    output = rules.output
    text = " ".join([r.text for r in output.recommendations] + [f.text for f in output.findings])
    return (
        [(r.rule, r.category) for r in output.recommendations],
        [f.code for f in output.findings],
        text,
    )


@pytest.mark.parametrize(
    ("recorded", "kept", "adult"),
    [
        ({"PatientAge": "052Y"}, "052Y", True),
        ({"PatientBirthDate": "19700615"}, "053Y", True),  # the study is on 2024-01-02
        ({"PatientAge": "010Y"}, "010Y", False),
    ],
    ids=["age", "birth-date", "child"],
)
def test_the_renal_rule_grades_the_copy_as_its_source(
    tmp_path: Path, recorded: dict[str, str], kept: str, adult: bool
) -> None:
    """Teaching copies dropped the age: the renal RI rule (adults only) saw none on them."""
    [path] = simulate("pw", tmp_path, seed=4, vessel="renal", side="right", edv_cm_s=15.0)
    ds = pydicom.dcmread(path)
    for keyword, value in recorded.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    copy = tmp_path / "copy.dcm"
    deidentify(read(path), UidMap(), label="T").save_as(copy, enforce_file_format=True)
    written = pydicom.dcmread(copy)
    assert written.PatientAge == kept and written.PatientBirthDate == ""
    rules, findings, text = _graded(path)
    copied_rules, copied_findings, copied_text = _graded(copy)
    assert (copied_rules, copied_findings) == (rules, findings)
    assert ("renal_resistive_index", "renal_ri_elevated") in rules if adult else not rules
    assert ("adult_criterion_not_applied" in findings) == (not adult)
    years = f"{int(kept[:3])} years old"
    assert years in text and years in copied_text and "not recorded" not in copied_text
    if "PatientAge" in recorded:  # the same words, the same age source
        assert copied_text == text


@pytest.mark.parametrize(
    ("recorded", "kept"),
    [
        ({"PatientAge": "095Y"}, "090Y"),
        ({"PatientBirthDate": "19281231"}, "090Y"),  # 95 at the study (2024-01-02)
        ({"PatientBirthDate": "19331231"}, "090Y"),  # 90
        ({"PatientBirthDate": "19340103"}, "089Y"),  # 89, one day short of 90
        ({"PatientAge": "1140M"}, None),  # not an age string, no dates: no age
        ({"PatientAge": "006W"}, "006W"),
        ({}, None),
    ],
    ids=["age-95", "born-95", "born-90", "born-89", "unreadable", "weeks", "none"],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # the unreadable age
def test_ages_of_90_or_more_are_aggregated_and_the_birth_date_never_kept(
    tmp_path: Path, recorded: dict[str, str], kept: str | None
) -> None:
    """HIPAA Safe Harbor: ages over 89 are one category (090Y); PS3.15 keeps the rest."""
    [path] = simulate("bmode", tmp_path, seed=6, rows=200, columns=240)
    ds = pydicom.dcmread(path)
    for keyword, value in recorded.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    copy = deidentify(read(path), UidMap(), label="T")
    assert copy.get("PatientAge") == kept
    assert copy.PatientBirthDate == "" and copy.LongitudinalTemporalInformationModified == "REMOVED"
    birth = recorded.get("PatientBirthDate", "")
    assert not birth or birth[:4] not in " ".join(_strings(copy))
    codes = [item.CodeValue for item in copy.DeidentificationMethodCodeSequence]
    assert codes == (["113100", "113108"] if kept else ["113100"])
