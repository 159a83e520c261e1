"""Published criteria at their boundaries: the code grades as the criterion text words it.

SRU consensus (Grant et al., Radiology 2003): ICA PSV < 125 cm/s: normal or < 50%;
125-230 cm/s: 50-69%; > 230 cm/s: >= 70%; ICA/CCA PSV ratio < 2.0, 2.0-4.0, > 4.0; ICA EDV
< 40, 40-100, > 100 cm/s. Renal RI > 0.70 is elevated. Below 50 cm/s (this product's prompt:
the consensus gives near occlusion no velocity) the ICA PSV is not graded. Each single-spectrum
rule is applied to a spectrum labelled as its own vessel.
"""

from __future__ import annotations

from typing import Any

import pytest

from usreview.processing.quantification.codes import CODES
from usreview.processing.quantification.vessel import SIDES, VESSELS, Vessel
from usreview.processing.recommendations.rules import RULES, apply_rule
from usreview.processing.recommendations.study import SRU_ICA_CCA, evaluate_study
from usreview.processing.results import Quantity, Recommendation

_RULES = {rule.name: rule for rule in RULES}


def _category(rule: str, value: float) -> str | None:
    name = _RULES[rule].quantity
    code, unit = CODES[name]
    [short] = _RULES[rule].vessels
    vessel = Vessel(short, VESSELS[short], "left", "test")
    said = apply_rule(_RULES[rule], Quantity(name, code, value, unit, 3, {}), vessel)
    assert said is None or isinstance(said, Recommendation)
    return None if said is None else said.category


@pytest.mark.parametrize(
    ("rule", "value", "category"),
    [
        ("sru_ica_stenosis_psv", 0.0, "ica_low_psv"),
        ("sru_ica_stenosis_psv", 49.99, "ica_low_psv"),
        ("sru_ica_stenosis_psv", 50.0, "ica_below_50"),
        ("sru_ica_stenosis_psv", 124.99, "ica_below_50"),
        ("sru_ica_stenosis_psv", 125.0, "ica_50_69"),
        ("sru_ica_stenosis_psv", 230.0, "ica_50_69"),
        ("sru_ica_stenosis_psv", 230.01, "ica_70_or_more"),
        ("sru_ica_stenosis_edv", 100.0, None),
        ("sru_ica_stenosis_edv", 100.01, "ica_70_or_more_edv"),
        ("renal_resistive_index", 0.70, None),
        ("renal_resistive_index", 0.7001, "renal_ri_elevated"),
    ],
)
def test_single_spectrum_rules_follow_their_criterion_text_at_the_boundaries(
    rule: str, value: float, category: str | None
) -> None:
    assert _category(rule, value) == category


@pytest.mark.parametrize(
    ("parameter", "value", "category"),
    [
        ("ica_psv", 0.0, "ica_low_psv"),
        ("ica_psv", 49.99, "ica_low_psv"),
        ("ica_psv", 50.0, "ica_below_50"),
        ("ica_psv", 124.99, "ica_below_50"),
        ("ica_psv", 125.0, "ica_50_69"),
        ("ica_psv", 230.0, "ica_50_69"),
        ("ica_psv", 230.01, "ica_70_or_more"),
        ("ica_cca_psv_ratio", 1.99, "ica_below_50"),
        ("ica_cca_psv_ratio", 2.0, "ica_50_69"),
        ("ica_cca_psv_ratio", 4.0, "ica_50_69"),
        ("ica_cca_psv_ratio", 4.01, "ica_70_or_more"),
        ("ica_edv", 39.99, "ica_below_50"),
        ("ica_edv", 40.0, "ica_50_69"),
        ("ica_edv", 100.0, "ica_50_69"),
        ("ica_edv", 100.01, "ica_70_or_more"),
    ],
)
def test_the_study_table_follows_its_criterion_text_at_the_boundaries(
    parameter: str, value: float, category: str
) -> None:
    found = SRU_ICA_CCA.category(parameter, value)
    assert found is not None and found.name == category


def _summary(
    vessel: str, psv: float, edv: float, unit: str = "cm/s", edv_unit: str | None = None
) -> dict[str, Any]:
    site = {"location": VESSELS[vessel].as_dict(), "laterality": SIDES["left"].as_dict()}
    return {
        "quantities": [
            {
                "processor": "doppler_indices",
                "name": name,
                "value": value,
                "unit": given,
                "cycles": 3,
                "details": {"finding_site": site},
            }
            for name, value, given in (
                ("peak_systolic_velocity", psv, unit),
                ("end_diastolic_velocity", edv, edv_unit or unit),
            )
        ]
    }


def test_a_study_with_an_ica_psv_of_exactly_230_is_graded_50_to_69() -> None:
    summaries = {"1.2.3.1": _summary("cca", 100.0, 20.0), "1.2.3.2": _summary("ica", 230.0, 100.0)}
    [evaluation] = evaluate_study(summaries)
    assert evaluation.recommendation.category == "ica_50_69"
    assert "the additional parameters agree" in evaluation.recommendation.text


# -- the study level grades the ICA PSV as one spectrum is graded -------------------------


@pytest.mark.parametrize(
    "psv", [0.0, 10.0, 40.0, 49.99, 50.0, 90.0, 124.99, 125.0, 180.0, 230.0, 230.01, 400.0]
)
def test_the_study_grades_the_ica_psv_as_the_instance_rule_does(psv: float) -> None:
    """One grading of the ICA PSV (``rules.grade`` on ``sru_ica_stenosis_psv``): the study's
    category is the spectrum's, low band included."""
    summaries = {"1.2.3.1": _summary("cca", 60.0, 15.0), "1.2.3.2": _summary("ica", psv, 10.0)}
    [evaluation] = evaluate_study(summaries)
    assert evaluation.recommendation.category == _category("sru_ica_stenosis_psv", psv)


def test_a_low_ica_psv_in_a_study_asks_to_exclude_occlusion_and_is_not_graded() -> None:
    """1.2 read an ICA PSV of 30 cm/s as "normal or < 50% stenosis", where the spectrum's
    own rule asks to exclude near and total occlusion."""
    summaries = {"1.2.3.1": _summary("cca", 60.0, 15.0), "1.2.3.2": _summary("ica", 30.0, 8.0)}
    [evaluation] = evaluate_study(summaries)
    rec = evaluation.recommendation
    assert rec.category == "ica_low_psv" and not evaluation.graded
    assert "exclude near occlusion" in rec.text and "total occlusion" in rec.text
    assert "meets the SRU consensus criterion" not in rec.text
    assert "parameters agree" not in rec.text and "parameters disagree" not in rec.text
    assert "ICA PSV 30.0 cm/s (band: not graded)" in rec.text
    assert evaluation.as_dict()["graded"] is False
    assert SRU_ICA_CCA.statements["ica_low_psv"] == SRU_ICA_CCA.category("ica_psv", 30.0).statement  # type: ignore[union-attr]
    [graded] = evaluate_study({**summaries, "1.2.3.2": _summary("ica", 90.0, 20.0)})
    assert graded.graded and graded.as_dict()["graded"] is True


@pytest.mark.parametrize(
    ("unit", "cca", "ica"),
    [
        ("m/s", (0.6, 0.15), (2.3, 0.7)),
        ("mm/s", (600.0, 150.0), (2300.0, 700.0)),
        ("cm/s", (60.0, 15.0), (230.0, 70.0)),
    ],
)
def test_a_study_reads_velocities_in_m_s_and_mm_s_as_cm_s(
    unit: str, cca: tuple[float, float], ica: tuple[float, float]
) -> None:
    """1.2 left a spectrum whose PSV was not in cm/s out without a word (no evaluation);
    now the same velocities give the same evaluation in any of the three units."""
    summaries = {"1.2.3.1": _summary("cca", *cca, unit), "1.2.3.2": _summary("ica", *ica, unit)}
    [evaluation] = evaluate_study(summaries)
    rec = evaluation.recommendation
    assert rec.category == "ica_50_69" and evaluation.findings == ()  # PSV 230: both ends
    assert [(q.name, q.value, q.unit) for q in rec.evidence] == [
        ("peak_systolic_velocity", 230.0, "cm/s"),  # the ICA's, converted exactly
        ("end_diastolic_velocity", 70.0, "cm/s"),
        ("peak_systolic_velocity", 60.0, "cm/s"),  # the CCA's
        ("ica_cca_psv_ratio", round(230.0 / 60.0, 3), "1"),
    ]
    psv = rec.evidence[0]
    if unit == "cm/s":
        assert "measured" not in psv.details and "measured as" not in rec.text
    else:
        assert psv.details["measured"] == {"value": ica[0], "unit": unit}
        assert f"ICA PSV 230.0 cm/s, measured as {ica[0]:g} {unit}" in rec.text


def test_a_velocity_in_a_unit_that_does_not_convert_is_left_out_with_a_finding() -> None:
    summaries = {
        "1.2.3.1": _summary("cca", 60.0, 15.0),
        "1.2.3.2": _summary("ica", 150.0, 30.0),
        "1.2.3.3": _summary("ica", 9.0, 2.0, "kHz"),  # a Doppler shift, not a velocity
    }
    [evaluation] = evaluate_study(summaries)
    assert evaluation.ica_sop_instance_uid == "1.2.3.2"
    assert evaluation.recommendation.category == "ica_50_69"
    [finding] = evaluation.findings
    assert finding.code == "unit_not_convertible"
    assert finding.evidence["sop_instance_uid"] == "1.2.3.3"
    assert finding.evidence["unit"] == "kHz" and finding.evidence["rule_unit"] == "cm/s"
    assert "Left out of the study evaluation" in finding.text
    assert finding.text in evaluation.recommendation.text
    assert evaluation.as_dict()["findings"] == [finding.as_dict()]
    # Its EDV alone in such a unit: the side is graded without it, and says so.
    summaries = {
        "1.2.3.1": _summary("cca", 60.0, 15.0),
        "1.2.3.2": _summary("ica", 150.0, 30.0, edv_unit="cm/min"),
    }
    [evaluation] = evaluate_study(summaries)
    assert {q.name for q in evaluation.recommendation.evidence} == {
        "peak_systolic_velocity",
        "ica_cca_psv_ratio",
    }
    [finding] = evaluation.findings
    assert finding.evidence["name"] == "end_diastolic_velocity"
    # The only ICA spectrum in such a unit: the side has no ICA, so it is not evaluated
    # (the spectrum's own rule says why, as a unit_not_convertible finding).
    summaries = {
        "1.2.3.1": _summary("cca", 60.0, 15.0),
        "1.2.3.3": _summary("ica", 9.0, 2.0, "kHz"),
    }
    assert evaluate_study(summaries) == []
