"""The vessel of a spectrum: read coded, else from text; finding sites; rules that use it.

Simulated ICA and CCA spectra with known PSVs go through the pipeline; the study rule
(SRU ICA/CCA criteria) is checked against the category the simulator's true values give.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from usreview.processing.analyze import analyze_file
from usreview.processing.execution import execute_file
from usreview.processing.quantification.vessel import vessel_of
from usreview.processing.recommendations.study import SRU_ICA_CCA, evaluate_study
from usreview.simulate import simulate


def _code(value: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, "x"
    return item


def _dataset(**attributes: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_the_code_comes_first_then_laterality() -> None:
    region = _code("32062004")
    region.AnatomicRegionModifierSequence = DicomSequence([_code("24028007")])
    coded = _dataset(AnatomicRegionSequence=DicomSequence([region]), SeriesDescription="LT ICA")
    found = vessel_of(coded)
    assert found is not None and (found.name, found.side) == ("cca", "right")
    assert found.source.startswith("AnatomicRegionSequence")
    assert found.finding_site()["laterality"]["value"] == "24028007"
    legacy = _dataset(AnatomicRegionSequence=DicomSequence([_code("T-45300", "SRT")]))
    legacy.ImageLaterality = "L"
    found = vessel_of(legacy)
    assert found is not None and (found.name, found.side) == ("ica", "left")
    series = _dataset(AnatomicRegionSequence=DicomSequence([_code("22286001")]), Laterality="R")
    found = vessel_of(series)
    assert found is not None and (found.name, found.side) == ("eca", "right")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LT ICA", ("ica", "left")),
        ("Rt. prox CCA", ("cca", "right")),
        ("R CCA distal", ("cca", "right")),
        ("left internal carotid", ("ica", "left")),
        ("ICA", ("ica", None)),
        ("LT RT ICA", ("ica", None)),
        ("ICA/CCA ratio", None),
        ("Carotid", None),
        ("PICA", None),
        ("Lt kidney", None),
    ],
)
def test_the_text_fallback_is_conservative(
    text: str, expected: tuple[str, str | None] | None
) -> None:
    found = vessel_of(_dataset(SeriesDescription=text))
    assert (None if found is None else (found.name, found.side)) == expected
    if found is not None:
        assert found.source == "SeriesDescription (text)"


def test_image_comments_are_read_when_the_description_says_nothing(tmp_path: Path) -> None:
    found = vessel_of(_dataset(SeriesDescription="Carotid", ImageComments="RT ECA"))
    assert found is not None and (found.name, found.side) == ("eca", "right")


def _measure(tmp_path: Path, name: str, **params: Any) -> tuple[Path, dict[str, Any]]:
    [path] = simulate("pw", tmp_path / name, seed=5, study="s", **params)
    return path, analyze_file(path)


def test_doppler_quantities_carry_the_vessel_into_json_and_sr(tmp_path: Path) -> None:
    path, summary = _measure(tmp_path, "ica", vessel="ica", side="right", psv_cm_s=150.0)
    psv = next(q for q in summary["quantities"] if q["name"] == "peak_systolic_velocity")
    site = psv["details"]["finding_site"]
    assert (site["location"]["value"], site["laterality"]["value"]) == ("86117002", "24028007")
    [vessel] = [f for f in summary["findings"] if f["code"] == "vessel"]
    assert vessel["evidence"]["label"] == "right internal carotid artery"
    [rec] = [r for r in summary["recommendations"] if r["rule"] == "sru_ica_stenosis_psv"]
    assert "labelled as the right internal carotid artery" in rec["text"]
    assert rec["category"] == "ica_50_69"

    outputs = execute_file(str(path))
    assert outputs.sr is not None
    document = hd.sr.srread(pydicom.filebase.DicomBytesIO(outputs.sr))
    [group] = document.content.get_image_measurement_groups()
    measurement = next(m for m in group.get_measurements() if m.name.value == "11726-7")
    [finding_site] = measurement.finding_sites
    assert finding_site.value.value == "86117002"
    assert finding_site.laterality is not None and finding_site.laterality.value == "24028007"


def test_a_rule_for_another_vessel_is_not_applied(tmp_path: Path) -> None:
    _, summary = _measure(tmp_path, "cca", vessel="cca", side="left", psv_cm_s=150.0)
    assert [r["rule"] for r in summary["recommendations"]] == []
    _, unlabelled = _measure(tmp_path, "none", psv_cm_s=150.0)
    assert unlabelled["recommendations"] == []  # no vessel: no grade for any vessel
    [label] = [f for f in unlabelled["findings"] if f["code"] == "vessel_not_labelled"]
    assert "sru_ica_stenosis_psv" in label["evidence"]["rules"]


def _expected(ica_psv: float, ratio: float, edv: float) -> list[str | None]:
    values = {"ica_psv": ica_psv, "ica_cca_psv_ratio": ratio, "ica_edv": edv}
    found = [SRU_ICA_CCA.category(p, v) for p, v in values.items()]
    return [None if c is None else c.name for c in found]


def _study(
    tmp_path: Path, name: str, spectra: list[tuple[str, str, float, float]]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    summaries, truths = {}, {}
    for number, (vessel, side, psv, edv) in enumerate(spectra):
        [path] = simulate(
            "pw", tmp_path / f"{name}{number}", seed=9, study=name, vessel=vessel, side=side,
            psv_cm_s=psv, edv_cm_s=edv,
        )  # fmt: skip
        summary = analyze_file(path)
        summaries[summary["sop_instance_uid"]] = summary
        truths[summary["sop_instance_uid"]] = {
            "vessel": vessel,
            "side": side,
            "psv": psv,
            "edv": edv,
        }
    return summaries, truths


@pytest.mark.parametrize(
    ("ica_psv", "ica_edv", "cca_psv"),
    [(90.0, 25.0, 80.0), (180.0, 60.0, 60.0), (320.0, 130.0, 55.0)],
)
def test_the_study_rule_gives_each_sru_category(
    tmp_path: Path, ica_psv: float, ica_edv: float, cca_psv: float
) -> None:
    summaries, _ = _study(
        tmp_path, "c", [("cca", "left", cca_psv, 20.0), ("ica", "left", ica_psv, ica_edv)]
    )
    [evaluation] = evaluate_study(summaries)
    rec = evaluation.recommendation
    expected = _expected(ica_psv, ica_psv / cca_psv, ica_edv)
    assert len(set(expected)) == 1  # the chosen values lie well inside one category
    assert rec.category == expected[0] and evaluation.side == "left"
    values = {(q.name, q.code.value): q for q in rec.evidence}
    ratio = values[("ica_cca_psv_ratio", "33868-1")].value
    assert ratio == pytest.approx(ica_psv / cca_psv, rel=0.08)
    ica = [
        q
        for q in rec.evidence
        if q.details.get("sop_instance_uid") == evaluation.ica_sop_instance_uid
    ]
    assert {q.name for q in ica} == {"peak_systolic_velocity", "end_diastolic_velocity"}
    assert (
        rec.source.startswith("Grant EG")
        and "Decision support for the reviewing expert" in rec.text
    )
    assert "the additional parameters agree" in rec.text


def test_the_study_rule_pairs_sides_and_reports_disagreement(tmp_path: Path) -> None:
    summaries, truths = _study(
        tmp_path,
        "d",
        [
            ("cca", "right", 150.0, 30.0),
            ("ica", "right", 140.0, 30.0),
            ("ica", "right", 180.0, 35.0),
            ("ica", "left", 300.0, 120.0),
        ],
    )
    [evaluation] = evaluate_study(summaries)  # the left ICA has no left CCA
    assert evaluation.side == "right"
    assert truths[evaluation.ica_sop_instance_uid]["psv"] == 180.0  # the highest ICA PSV
    rec = evaluation.recommendation
    assert rec.category == _expected(180.0, 180.0 / 150.0, 35.0)[0] == "ica_50_69"
    assert "the parameters disagree" in rec.text
    assert math.isfinite(next(q.value for q in rec.evidence if q.name == "ica_cca_psv_ratio"))
