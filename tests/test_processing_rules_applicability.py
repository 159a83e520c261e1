"""When a single-spectrum rule may grade: the vessel, the unit and the patient's age.

A PSV fits the carotid bands and an RI the renal band whatever vessel they came from, so a
spectrum that names no vessel is not graded (one finding asks for the label); a value in
another unit is converted only when the conversion is exact (m/s, cm/s; %, ratio), else
the rule is skipped with a finding; a rule for adults is not applied to a child; and an ICA
PSV too low for any SRU grade asks to exclude near or total occlusion.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from usreview.processing import default_registry
from usreview.processing.analyze import analyze_file
from usreview.processing.quantification.codes import CODES
from usreview.processing.quantification.vessel import VESSELS, Vessel
from usreview.processing.recommendations.patient import ADULT_YEARS, age_of
from usreview.processing.recommendations.rules import (
    LOW_ICA_PSV_CM_S,
    RULES,
    UNITS,
    Band,
    Rule,
    apply_rule,
    convert,
)
from usreview.processing.results import Finding, Quantity, Recommendation
from usreview.simulate import simulate
from usreview.store.jobs import outdated_processors
from usreview.store.worklist import ROUTINE_CATEGORIES

_RULES = {rule.name: rule for rule in RULES}
_ICA = Vessel("ica", VESSELS["ica"], "left", "test")
_RENAL = Vessel("renal", VESSELS["renal"], "right", "test")


def _quantity(name: str, value: float, unit: str | None = None) -> Quantity:
    code, default = CODES[name]
    return Quantity(name, code, value, unit or default, 3, {})


def _analyze(tmp_path: Path, age: str | None = None, **params: Any) -> dict[str, Any]:
    [path] = simulate("pw", tmp_path, seed=1, **params)
    if age is not None:
        ds = pydicom.dcmread(path)
        ds.PatientAge = age
        ds.save_as(path)
    return analyze_file(path)


def _ours(summary: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rules' findings and recommendations."""
    findings = [f for f in summary["findings"] if f["processor"] == "vascular_rules"]
    return findings, summary["recommendations"]


# -- the vessel --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"psv_cm_s": 140, "edv_cm_s": 30},  # carotid-like: was "50-69%" and "renal RI elevated"
        {"waveform": "renal", "psv_cm_s": 60, "edv_cm_s": 15},  # renal-like: was an ICA grade
    ],
)
def test_an_unlabelled_spectrum_gets_one_label_finding_and_no_grade(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    findings, recommendations = _ours(_analyze(tmp_path, **params))
    assert recommendations == []
    [finding] = findings
    assert finding["code"] == "vessel_not_labelled"
    assert finding["text"].startswith("Not graded: the spectrum names no vessel")
    assert set(finding["evidence"]["rules"]) == {rule.name for rule in RULES}


def test_apply_rule_without_a_vessel_asks_for_the_label() -> None:
    said = apply_rule(_RULES["sru_ica_stenosis_psv"], _quantity("peak_systolic_velocity", 140.0))
    assert isinstance(said, Finding) and said.code == "vessel_not_labelled"


# -- the unit ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "vessel", "value", "unit", "category", "shown"),
    [
        ("sru_ica_stenosis_psv", _ICA, 2.6, "m/s", "ica_70_or_more", "260 cm/s (measured as 2.6"),
        ("sru_ica_stenosis_psv", _ICA, 2.3, "m/s", "ica_50_69", "230 cm/s (measured as 2.3 m/s"),
        ("sru_ica_stenosis_psv", _ICA, 1.2499, "m/s", "ica_below_50", "124.99 cm/s"),
        ("sru_ica_stenosis_edv", _ICA, 1.01, "m/s", "ica_70_or_more_edv", "101 cm/s"),
        ("renal_resistive_index", _RENAL, 72.0, "%", "renal_ri_elevated", "0.72 (measured as 72"),
        ("renal_resistive_index", _RENAL, 65.0, "%", None, None),
        ("renal_resistive_index", _RENAL, 70.0, "%", None, None),
    ],
)
def test_a_value_in_another_unit_is_converted_exactly_before_grading(
    rule: str, vessel: Vessel, value: float, unit: str, category: str | None, shown: str | None
) -> None:
    name = _RULES[rule].quantity
    said = apply_rule(_RULES[rule], _quantity(name, value, unit), vessel)
    if category is None:
        assert said is None
        return
    assert isinstance(said, Recommendation) and said.category == category
    assert shown is not None and shown in said.text
    assert said.evidence[0].unit == unit  # the evidence is the value as measured


@pytest.mark.parametrize("unit", ["kHz", "cm/sec", "mm"])
def test_a_unit_without_an_exact_conversion_skips_the_rule_with_a_finding(unit: str) -> None:
    rule = _RULES["sru_ica_stenosis_psv"]
    said = apply_rule(rule, _quantity("peak_systolic_velocity", 2.6, unit), _ICA)
    assert isinstance(said, Finding) and said.code == "unit_not_convertible"
    assert said.evidence["rule_unit"] == "cm/s" and said.evidence["quantity"]["unit"] == unit


def test_conversions_shift_decimal_digits_and_refuse_other_dimensions() -> None:
    assert convert(2.3, "m/s", "cm/s") == 230.0  # not 229.99999999999997
    assert convert(125.0, "cm/s", "m/s") == 1.25
    assert convert(72.0, "%", "1") == 0.72
    assert convert(0.7, "1", "%") == 70.0
    assert convert(7.0, "mm/s", "cm/s") == 0.7
    assert convert(1.0, "%", "cm/s") is None
    assert convert(1.0, "Hz", "cm/s") is None


def test_every_rule_reads_the_unit_its_quantity_is_reported_in() -> None:
    for rule in RULES:
        assert rule.unit == CODES[rule.quantity][1], rule.name
        assert rule.unit in UNITS


def test_a_rule_refuses_a_unit_it_cannot_convert() -> None:
    band = Band(0.0, 1.0, "x", "x")
    with pytest.raises(ValueError, match="'unit'"):
        Rule("r", "peak_systolic_velocity", "cm/sec", "v", "c", "s", (band,))
    with pytest.raises(ValueError, match="'vessels'"):
        Rule("r", "peak_systolic_velocity", "cm/s", "v", "c", "s", (band,), vessels=("aorta",))


# -- low velocity in the ICA -------------------------------------------------------------


def test_a_low_ica_psv_asks_to_exclude_occlusion_instead_of_a_grade(tmp_path: Path) -> None:
    summary = _analyze(tmp_path, psv_cm_s=25, edv_cm_s=8, vessel="ica", side="left")
    _, recommendations = _ours(summary)
    [psv] = [r for r in recommendations if r["rule"] == "sru_ica_stenosis_psv"]
    assert psv["category"] == "ica_low_psv" != "ica_below_50"
    assert "near occlusion" in psv["text"] and "total occlusion" in psv["text"]
    assert "meets the published criterion" not in psv["text"]
    assert f"< {LOW_ICA_PSV_CM_S:g} cm/s" in psv["criterion"]
    assert "ica_low_psv" not in ROUTINE_CATEGORIES  # the worklist flags it


# -- the patient's age -------------------------------------------------------------------


def _header(**attributes: str) -> Dataset:
    """A header with these values, messy ones too (as a scanner may write them)."""
    ds = Dataset()
    with warnings.catch_warnings():  # pydicom warns of the messy ones when they are set
        warnings.simplefilter("ignore")
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("attributes", "years", "adult"),
    [
        ({"PatientAge": "054Y"}, 54.0, True),
        ({"PatientAge": "018Y"}, 18.0, True),
        ({"PatientAge": "017Y"}, 17.0, False),
        ({"PatientAge": "216M"}, 18.0, True),
        ({"PatientAge": "215M"}, 17.917, False),
        ({"PatientAge": "006W"}, 0.115, False),
        ({"PatientAge": "010D"}, 0.027, False),
        ({"PatientAge": "45y"}, 45.0, True),  # tolerated: short, lower case
        # The Patient's Age wins over the dates.
        ({"PatientAge": "009Y", "PatientBirthDate": "19700101", "StudyDate": "20240102"}, 9, False),
        # Unreadable age: the dates decide (completed years).
        ({"PatientAge": "abc", "PatientBirthDate": "20060102", "StudyDate": "20240102"}, 18, True),
        ({"PatientBirthDate": "20060103", "StudyDate": "20240102"}, 17.0, False),
        ({"PatientBirthDate": "20000229", "StudyDate": "20180228"}, 17.0, False),
        ({"PatientBirthDate": "20000229", "StudyDate": "20180301"}, 18.0, True),
    ],
)
def test_the_age_is_read_from_patients_age_else_birth_and_study_dates(
    attributes: dict[str, str], years: float, adult: bool
) -> None:
    age = age_of(_header(**attributes))
    assert age is not None
    assert age.years == pytest.approx(years, abs=1e-3) and age.adult is adult


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {"PatientAge": "", "PatientBirthDate": ""},
        {"PatientBirthDate": "20100101"},  # no study date
        {"PatientBirthDate": "20300101", "StudyDate": "20240102"},  # born after the study
        {"PatientBirthDate": "2010", "StudyDate": "20240102"},
    ],
)
def test_no_usable_age_is_no_answer(attributes: dict[str, str]) -> None:
    assert age_of(_header(**attributes)) is None


def test_the_adult_rule_is_not_applied_to_a_child(tmp_path: Path) -> None:
    summary = _analyze(
        tmp_path, age="009Y", waveform="renal", psv_cm_s=60, edv_cm_s=15, vessel="renal"
    )
    findings, recommendations = _ours(summary)
    assert recommendations == []
    [finding] = findings
    assert finding["code"] == "adult_criterion_not_applied"
    assert "9 years old" in finding["text"] and finding["evidence"]["age_years"] < ADULT_YEARS


@pytest.mark.parametrize(("age", "said"), [("054Y", "54 years old"), (None, "not recorded")])
def test_the_adult_rule_says_what_it_knows_of_the_age(
    tmp_path: Path, age: str | None, said: str
) -> None:
    summary = _analyze(
        tmp_path, age=age, waveform="renal", psv_cm_s=60, edv_cm_s=15, vessel="renal"
    )
    findings, recommendations = _ours(summary)
    assert findings == []
    [rec] = recommendations
    assert rec["category"] == "renal_ri_elevated"
    assert "holds for adults" in rec["text"] and said in rec["text"]


# -- the version -------------------------------------------------------------------------


def test_results_of_the_previous_rules_show_as_outdated() -> None:
    current = {proc.name: proc.version for proc in default_registry()}
    assert outdated_processors(["vascular_rules=1.2"], current) == [
        f"vascular_rules 1.2 -> {current['vascular_rules']}"
    ]
