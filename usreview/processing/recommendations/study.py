"""Study-level rules: criteria that combine the spectra of several vessels of one study.

:data:`SRU_ICA_CCA` is the SRU consensus table for internal carotid stenosis (Grant et al.,
Radiology 2003): per category, the ICA peak systolic velocity (primary), the ICA/CCA PSV
ratio and the ICA end-diastolic velocity (additional), each a band whose ends are open or
closed as the consensus words them ("125-230 cm/s" holds both ends, "> 230 cm/s" not 230,
"< 125 cm/s" not 125). It applies
when a study holds PW spectra labelled as the ICA and the CCA of the same side
(:mod:`usreview.processing.quantification.vessel`, read by ``doppler_indices`` into each
quantity's finding site). Per side, the ICA spectrum with the highest PSV is used (the
stenotic jet) and the mean PSV of that side's CCA spectra; the category is the one of the
ICA PSV, and the recommendation states every value, the band each falls in, whether they
agree, and the rule with its source. Plaque (which separates normal from < 50%) and near
or total occlusion are not decidable from these values and are left to the reviewing
expert, who decides.

:func:`evaluate_study` reads the JSON summaries of a study's instances (as the processing
worker stores them) and returns a :class:`StudyEvaluation` per side that has both vessels;
the worker runs it when an instance of a study is processed
(:mod:`usreview.processing.study_results`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from usreview.processing.quantification.codes import CODES
from usreview.processing.quantification.vessel import SIDES, VESSELS
from usreview.processing.recommendations.rules import SUPPORT, Closed, within
from usreview.processing.results import Code, CodingScheme, Quantity, Recommendation

__all__ = [
    "ICA_CCA_RATIO",
    "SRU_ICA_CCA",
    "Category",
    "StudyEvaluation",
    "StudyRule",
    "evaluate_study",
]

#: LOINC "ICA/CCA velocity ratio" (DICOM CID 12123 Carotid Ratios).
ICA_CCA_RATIO = Code("33868-1", CodingScheme.LOINC, "ICA/CCA velocity ratio")
_PSV, _EDV, _RATIO = "ica_psv", "ica_edv", "ica_cca_psv_ratio"
_WORDS = {_PSV: "ICA PSV", _RATIO: "ICA/CCA PSV ratio", _EDV: "ICA EDV"}


@dataclass(frozen=True)
class Category:
    """One row of a table of criteria: each parameter's band ``(low, high, closed)``.

    ``closed`` names the ends that belong to the band (:data:`~.rules.Closed`).
    """

    name: str
    statement: str
    bands: Mapping[str, tuple[float, float, Closed]]

    def holds(self, parameter: str, value: float) -> bool:
        """Whether ``value`` of ``parameter`` falls in this category's band."""
        low, high, closed = self.bands[parameter]
        return within(value, low, high, closed)


@dataclass(frozen=True)
class StudyRule:
    """A published table of criteria on values from several spectra of one study."""

    name: str
    criterion: str
    source: str
    primary: str
    categories: tuple[Category, ...]

    def category(self, parameter: str, value: float) -> Category | None:
        """The category whose band of ``parameter`` holds ``value``."""
        return next((c for c in self.categories if c.holds(parameter, value)), None)


SRU_ICA_CCA = StudyRule(
    name="sru_ica_stenosis_ica_cca",
    criterion="SRU consensus, ICA stenosis: ICA PSV < 125 cm/s, ICA/CCA PSV ratio < 2.0, ICA "
    "EDV < 40 cm/s: normal or < 50% (plaque decides); PSV 125-230 cm/s, ratio 2.0-4.0, EDV "
    "40-100 cm/s: 50-69%; PSV > 230 cm/s, ratio > 4.0, EDV > 100 cm/s: >= 70% (short of near "
    "occlusion). ICA PSV is the primary parameter, the ratio and EDV additional ones",
    source="Grant EG et al. Carotid artery stenosis: gray-scale and Doppler US diagnosis - "
    "Society of Radiologists in Ultrasound Consensus Conference. Radiology 2003;229:340-346",
    primary=_PSV,
    categories=(
        Category(
            "ica_below_50",
            "normal or < 50% stenosis (plaque on B-mode decides)",
            {_PSV: (0.0, 125.0, "left"), _RATIO: (0.0, 2.0, "left"), _EDV: (0.0, 40.0, "left")},
        ),
        Category(
            "ica_50_69",
            "50-69% stenosis",
            {
                _PSV: (125.0, 230.0, "both"),
                _RATIO: (2.0, 4.0, "both"),
                _EDV: (40.0, 100.0, "both"),
            },
        ),
        Category(
            "ica_70_or_more",
            ">= 70% stenosis (short of near occlusion)",
            {
                _PSV: (230.0, math.inf, "neither"),
                _RATIO: (4.0, math.inf, "neither"),
                _EDV: (100.0, math.inf, "neither"),
            },
        ),
    ),
)


@dataclass(frozen=True)
class _Spectrum:
    sop_instance_uid: str
    vessel: str
    side: str
    psv: Mapping[str, Any]
    edv: Mapping[str, Any] | None


@dataclass(frozen=True)
class StudyEvaluation:
    """The rule applied to one side of a study: the recommendation and the instances used."""

    side: str
    recommendation: Recommendation
    ica_sop_instance_uid: str
    cca_sop_instance_uids: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {
            "side": self.side,
            "ica_sop_instance_uid": self.ica_sop_instance_uid,
            "cca_sop_instance_uids": list(self.cca_sop_instance_uids),
            **self.recommendation.as_dict(),
        }


_VESSEL_BY_CODE = {code.value: name for name, code in VESSELS.items()}
_SIDE_BY_CODE = {code.value: name for name, code in SIDES.items()}


def _spectra(uid: str, summary: Mapping[str, Any]) -> list[_Spectrum]:
    """The labelled PW spectrum of one instance's summary (none if unlabelled or unmeasured)."""
    found: dict[str, Mapping[str, Any]] = {}
    for quantity in summary.get("quantities") or []:
        if not isinstance(quantity, Mapping) or quantity.get("processor") != "doppler_indices":
            continue
        found[str(quantity.get("name"))] = quantity
    psv = found.get("peak_systolic_velocity")
    if psv is None or psv.get("unit") != "cm/s":
        return []
    site = (psv.get("details") or {}).get("finding_site") or {}
    vessel = _VESSEL_BY_CODE.get(str((site.get("location") or {}).get("value")))
    side = _SIDE_BY_CODE.get(str((site.get("laterality") or {}).get("value")))
    if vessel is None or side is None:
        return []
    return [_Spectrum(uid, vessel, side, psv, found.get("end_diastolic_velocity"))]


def _quantity(name: str, entry: Mapping[str, Any], uid: str) -> Quantity:
    code, unit = CODES[name]
    details = dict(entry.get("details") or {})
    details["sop_instance_uid"] = uid
    cycles = entry.get("cycles")
    return Quantity(name, code, float(entry["value"]), unit, cycles, details)


def evaluate_study(
    summaries: Mapping[str, Mapping[str, Any]], rule: StudyRule = SRU_ICA_CCA
) -> list[StudyEvaluation]:
    """Apply ``rule`` to each side of a study holding ICA and CCA spectra.

    ``summaries`` maps each instance's SOP Instance UID to its JSON summary.
    """
    spectra = [s for uid, summary in sorted(summaries.items()) for s in _spectra(uid, summary)]
    out: list[StudyEvaluation] = []
    for side in sorted({s.side for s in spectra}):
        icas = [s for s in spectra if s.side == side and s.vessel == "ica"]
        ccas = [s for s in spectra if s.side == side and s.vessel == "cca"]
        if not icas or not ccas:
            continue
        ica = max(icas, key=lambda s: float(s.psv["value"]))
        cca_psv = sum(float(s.psv["value"]) for s in ccas) / len(ccas)
        if cca_psv <= 0:
            continue
        out.append(_evaluate(rule, side, ica, ccas, cca_psv))
    return out


def _evaluate(
    rule: StudyRule, side: str, ica: _Spectrum, ccas: list[_Spectrum], cca_psv: float
) -> StudyEvaluation:
    ica_psv = _quantity("peak_systolic_velocity", ica.psv, ica.sop_instance_uid)
    values = {_PSV: ica_psv.value, _RATIO: round(ica_psv.value / cca_psv, 3)}
    evidence = [ica_psv]
    if ica.edv is not None:
        edv = _quantity("end_diastolic_velocity", ica.edv, ica.sop_instance_uid)
        values[_EDV] = edv.value
        evidence.append(edv)
    cca_sites = [(s.psv.get("details") or {}).get("finding_site") for s in ccas]
    cca = Quantity(
        "peak_systolic_velocity",
        CODES["peak_systolic_velocity"][0],
        round(cca_psv, 4),
        "cm/s",
        None,
        {
            "finding_site": cca_sites[0],
            "sop_instance_uids": [s.sop_instance_uid for s in ccas],
            "per_spectrum": [float(s.psv["value"]) for s in ccas],
        },
    )
    ratio = Quantity(
        "ica_cca_psv_ratio",
        ICA_CCA_RATIO,
        values[_RATIO],
        "1",
        None,
        {"finding_site": (ica.psv.get("details") or {}).get("finding_site")},
    )
    evidence += [cca, ratio]
    primary = rule.category(rule.primary, values[rule.primary])
    assert primary is not None  # the bands cover [0, inf)
    per = {p: rule.category(p, v) for p, v in values.items()}
    stated = "; ".join(_stated(p, v, per[p]) for p, v in values.items())
    agree = all(c is primary for c in per.values())
    text = (
        f"{SUPPORT}: in the {side} carotid, labelled ICA and CCA spectra give {stated}. The ICA "
        f"PSV, the primary criterion, meets the SRU consensus criterion for {primary.statement}"
        + (
            "; the additional parameters agree."
            if agree
            else "; the parameters disagree, so check the angle correction, the sampling site "
            "(highest ICA velocity, CCA below the bulb) and contralateral or cardiac causes."
        )
        + " Please confirm the vessels and traces; plaque on B-mode, near and total occlusion "
        "are for the reviewing expert to judge."
    )
    recommendation = Recommendation(
        rule=rule.name,
        category=primary.name,
        text=text,
        criterion=rule.criterion,
        source=rule.source,
        evidence=tuple(evidence),
    )
    return StudyEvaluation(
        side, recommendation, ica.sop_instance_uid, tuple(s.sop_instance_uid for s in ccas)
    )


def _stated(parameter: str, value: float, category: Category | None) -> str:
    band = "no band" if category is None else category.statement
    return f"{_WORDS[parameter]} {_fmt(parameter, value)} (band: {band})"


def _fmt(parameter: str, value: float) -> str:
    return f"{value:.2f}" if parameter == _RATIO else f"{value:.1f} cm/s"
