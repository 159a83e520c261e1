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


def _summary(vessel: str, psv: float, edv: float) -> dict[str, Any]:
    site = {"location": VESSELS[vessel].as_dict(), "laterality": SIDES["left"].as_dict()}
    return {
        "quantities": [
            {
                "processor": "doppler_indices",
                "name": name,
                "value": value,
                "unit": "cm/s",
                "cycles": 3,
                "details": {"finding_site": site},
            }
            for name, value in (("peak_systolic_velocity", psv), ("end_diastolic_velocity", edv))
        ]
    }


def test_a_study_with_an_ica_psv_of_exactly_230_is_graded_50_to_69() -> None:
    summaries = {"1.2.3.1": _summary("cca", 100.0, 20.0), "1.2.3.2": _summary("ica", 230.0, 100.0)}
    [evaluation] = evaluate_study(summaries)
    assert evaluation.recommendation.category == "ica_50_69"
    assert "the additional parameters agree" in evaluation.recommendation.text
