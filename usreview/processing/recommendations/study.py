"""Study-level rules: criteria that combine the spectra of several vessels of one study.

:data:`SRU_ICA_CCA` is the SRU consensus table for internal carotid stenosis (Grant et al.,
Radiology 2003): the ICA peak systolic velocity (primary), the ICA/CCA PSV ratio and the
ICA end-diastolic velocity (additional). The ICA PSV is graded by the single-spectrum rule
:data:`~.rules.SRU_ICA_PSV` with :func:`~.rules.grade`, as ``vascular_rules`` grades one
spectrum: the same bands, the same ends, and the same low band (PSV < 50 cm/s, this
product's prompt), which is not graded but asks to exclude near or total occlusion. The
additional parameters are graded by the table's bands, each end open or closed as the
consensus words them ("2.0-4.0" holds both ends, "> 4.0" not 4.0, "< 40 cm/s" not 40).
It applies when a study holds PW spectra labelled as the ICA and the CCA of the same side
(:mod:`usreview.processing.quantification.vessel`, read by ``doppler_indices`` into each
quantity's finding site). Per side, the ICA spectrum with the highest PSV is used (the
stenotic jet) and the mean PSV of that side's CCA spectra; the category is the one of the
ICA PSV, and the recommendation states every value, the band each falls in, whether they
agree, and the rule with its source. Plaque (which separates normal from < 50%) and near
or total occlusion are not decidable from these values and are left to the reviewing
expert, who decides.

Velocities are read in cm/s: one in another unit is converted exactly as the single-spectrum
rules convert it (:func:`~usreview.processing.units.convert`: m/s and mm/s), and one in a
unit that does not convert is left out with a ``unit_not_convertible`` finding of its
side's evaluation (a side left without an ICA or a CCA spectrum is not evaluated; the
instance's own rules say why for its ICA).

:func:`evaluate_study` reads the JSON summaries of a study's instances (as the processing
worker stores them) and returns a :class:`StudyEvaluation` per side that has both vessels;
the worker runs it when an instance of a study is processed
(:mod:`usreview.processing.study_results`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from usreview.dicom import ImageKind
from usreview.processing.quantification.codes import CODES
from usreview.processing.quantification.vessel import SIDES, VESSELS
from usreview.processing.recommendations.rules import (
    LOW_ICA_PSV_CM_S,
    SRU_ICA_PSV,
    SUPPORT,
    Closed,
    Rule,
    grade,
    within,
)
from usreview.processing.results import Code, CodingScheme, Finding, Quantity, Recommendation
from usreview.processing.units import convert

__all__ = [
    "ICA_CCA_RATIO",
    "KINDS",
    "NAME",
    "SRU_ICA_CCA",
    "VERSION",
    "Category",
    "StudyEvaluation",
    "StudyRule",
    "evaluate_study",
]

#: Version of the study-level evaluation (its provenance in the SR and JSON). 1.3 grades
#: the ICA PSV by the single-spectrum rule (an ICA PSV < 50 cm/s is not graded but asks to
#: exclude near or total occlusion; 1.2 read it as normal or < 50%) and converts a velocity
#: in m/s or mm/s (1.2 left such a spectrum out without a word). Also
#: :data:`usreview.processing.study_results.VERSION`.
VERSION: Final = "1.3"
#: How a processing job records the study evaluation its instance's results may trigger
#: (``study_evaluation=VERSION`` among its processors, for an instance of a kind in
#: :data:`KINDS`): ``usreview hub jobs --outdated`` lists the jobs whose study an older
#: version evaluated; processing them again evaluates their study again.
NAME: Final = "study_evaluation"
#: The kinds of image whose results the study rules read (labelled PW spectra).
KINDS: Final = frozenset({ImageKind.PW_DOPPLER})
#: LOINC "ICA/CCA velocity ratio" (DICOM CID 12123 Carotid Ratios).
ICA_CCA_RATIO = Code("33868-1", CodingScheme.LOINC, "ICA/CCA velocity ratio")
_PSV, _EDV, _RATIO = "ica_psv", "ica_edv", "ica_cca_psv_ratio"
_WORDS = {_PSV: "ICA PSV", _RATIO: "ICA/CCA PSV ratio", _EDV: "ICA EDV"}
#: The unit the velocities are read in (that of the rules' bands).
_CM_S = "cm/s"


@dataclass(frozen=True)
class Category:
    """One row of a table of criteria: each parameter's band ``(low, high, closed)``.

    ``closed`` names the ends that belong to the band (:data:`~.rules.Closed`). ``graded``
    is false for a band the published criterion does not grade (:attr:`~.rules.Band.graded`):
    its ``statement`` says what to check instead.
    """

    name: str
    statement: str
    bands: Mapping[str, tuple[float, float, Closed]]
    graded: bool = True

    def holds(self, parameter: str, value: float) -> bool:
        """Whether ``value`` of ``parameter`` falls in this category's band (``False`` for
        a parameter it has no band for)."""
        if parameter not in self.bands:
            return False
        low, high, closed = self.bands[parameter]
        return within(value, low, high, closed)


@dataclass(frozen=True)
class StudyRule:
    """A published table of criteria on values from several spectra of one study.

    Its ``primary`` parameter is graded by the single-spectrum rule ``primary_rule`` (with
    :func:`~.rules.grade`, the same bands as on one spectrum); ``categories`` hold the
    bands of the other parameters, named as the primary rule's bands.
    """

    name: str
    criterion: str
    source: str
    primary: str
    primary_rule: Rule
    categories: tuple[Category, ...]

    def category(self, parameter: str, value: float) -> Category | None:
        """The category whose band of ``parameter`` holds ``value``."""
        if parameter == self.primary:
            band = grade(self.primary_rule, value)
            if band is None:
                return None
            bands = {parameter: (band.low, band.high, band.closed)}
            return Category(band.category, band.statement, bands, band.graded)
        return next((c for c in self.categories if c.holds(parameter, value)), None)

    @property
    def statements(self) -> dict[str, str]:
        """Each category's statement by its name, the primary rule's bands first."""
        out = {band.category: band.statement for band in self.primary_rule.bands}
        for category in self.categories:
            out.setdefault(category.name, category.statement)
        return out


_STATEMENTS = {band.category: band.statement for band in SRU_ICA_PSV.bands}

SRU_ICA_CCA = StudyRule(
    name="sru_ica_stenosis_ica_cca",
    criterion="SRU consensus, ICA stenosis: ICA PSV < 125 cm/s, ICA/CCA PSV ratio < 2.0, ICA "
    "EDV < 40 cm/s: normal or < 50% (plaque decides); PSV 125-230 cm/s, ratio 2.0-4.0, EDV "
    "40-100 cm/s: 50-69%; PSV > 230 cm/s, ratio > 4.0, EDV > 100 cm/s: >= 70% (or near "
    "occlusion). ICA PSV is the primary parameter, the ratio and EDV additional ones. Near "
    "occlusion has no velocity threshold and total occlusion no flow, so an ICA PSV < "
    f"{LOW_ICA_PSV_CM_S:g} cm/s (this product's prompt, not a consensus value) is "
    "not graded: exclude them first",
    source=SRU_ICA_PSV.source,
    primary=_PSV,
    primary_rule=SRU_ICA_PSV,
    categories=(
        Category(
            "ica_below_50",
            _STATEMENTS["ica_below_50"],
            {_RATIO: (0.0, 2.0, "left"), _EDV: (0.0, 40.0, "left")},
        ),
        Category(
            "ica_50_69",
            _STATEMENTS["ica_50_69"],
            {_RATIO: (2.0, 4.0, "both"), _EDV: (40.0, 100.0, "both")},
        ),
        Category(
            "ica_70_or_more",
            _STATEMENTS["ica_70_or_more"],
            {_RATIO: (4.0, math.inf, "neither"), _EDV: (100.0, math.inf, "neither")},
        ),
    ),
)


@dataclass(frozen=True)
class _Spectrum:
    sop_instance_uid: str
    vessel: str
    side: str
    psv: Quantity
    """In cm/s."""
    edv: Quantity | None
    """In cm/s; ``None`` when not measured or in a unit that does not convert."""
    left_out: tuple[Finding, ...] = ()
    """Its EDV in a unit that does not convert."""


@dataclass(frozen=True)
class StudyEvaluation:
    """The rule applied to one side of a study: the recommendation and the instances used.

    ``findings`` name the values of this side's spectra left out (a unit that does not
    convert to cm/s).
    """

    side: str
    recommendation: Recommendation
    ica_sop_instance_uid: str
    cca_sop_instance_uids: tuple[str, ...]
    findings: tuple[Finding, ...] = ()

    @property
    def graded(self) -> bool:
        """Whether the ICA PSV was graded (not the low band that asks to exclude occlusion)."""
        return self.recommendation.category in _GRADED

    def as_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {
            "side": self.side,
            "ica_sop_instance_uid": self.ica_sop_instance_uid,
            "cca_sop_instance_uids": list(self.cca_sop_instance_uids),
            **self.recommendation.as_dict(),
            "graded": self.graded,
            "findings": [finding.as_dict() for finding in self.findings],
        }


_GRADED = frozenset(band.category for band in SRU_ICA_PSV.bands if band.graded)
_VESSEL_BY_CODE = {code.value: name for name, code in VESSELS.items()}
_SIDE_BY_CODE = {code.value: name for name, code in SIDES.items()}


def _not_convertible(uid: str, vessel: str, side: str, entry: Mapping[str, Any]) -> Finding:
    name = str(entry.get("name"))
    unit = str(entry.get("unit"))
    what = f"{side} {vessel.upper()} {name.replace('_', ' ')}"
    return Finding(
        "unit_not_convertible",
        f"Left out of the study evaluation ({SRU_ICA_CCA.name}): the {what} of instance {uid}, "
        f"{entry.get('value')} {unit}, does not convert exactly to {_CM_S!r}, the rule's "
        "unit; check the measurement's unit.",
        {
            "rule": SRU_ICA_CCA.name,
            "sop_instance_uid": uid,
            "name": name,
            "value": entry.get("value"),
            "unit": unit,
            "rule_unit": _CM_S,
        },
    )


def _in_cm_s(entry: Mapping[str, Any], uid: str) -> Quantity | None:
    """The velocity of a summary's quantity ``entry`` in cm/s, or ``None`` when its unit
    does not convert exactly (:func:`~usreview.processing.units.convert`)."""
    name = str(entry["name"])
    code, unit = CODES[name]
    measured, measured_unit = float(entry["value"]), str(entry.get("unit"))
    value = convert(measured, measured_unit, unit)
    if value is None:
        return None
    details = dict(entry.get("details") or {})
    details["sop_instance_uid"] = uid
    if measured_unit != unit:
        details["measured"] = {"value": measured, "unit": measured_unit}
    return Quantity(name, code, value, unit, entry.get("cycles"), details)


def _spectra(
    uid: str, summary: Mapping[str, Any]
) -> tuple[list[_Spectrum], list[tuple[str, Finding]]]:
    """The labelled PW spectrum of one instance's summary (none if unlabelled or unmeasured),
    and, by side, a finding for a labelled spectrum whose PSV unit does not convert."""
    found: dict[str, Mapping[str, Any]] = {}
    for quantity in summary.get("quantities") or []:
        if not isinstance(quantity, Mapping) or quantity.get("processor") != "doppler_indices":
            continue
        found[str(quantity.get("name"))] = quantity
    psv = found.get("peak_systolic_velocity")
    if psv is None:
        return [], []
    site = (psv.get("details") or {}).get("finding_site") or {}
    vessel = _VESSEL_BY_CODE.get(str((site.get("location") or {}).get("value")))
    side = _SIDE_BY_CODE.get(str((site.get("laterality") or {}).get("value")))
    if vessel is None or side is None:
        return [], []
    psv_cm_s = _in_cm_s(psv, uid)
    if psv_cm_s is None:
        return [], [(side, _not_convertible(uid, vessel, side, psv))]
    edv = found.get("end_diastolic_velocity")
    left_out: tuple[Finding, ...] = ()
    edv_cm_s = None if edv is None else _in_cm_s(edv, uid)
    if edv is not None and edv_cm_s is None and vessel == "ica":
        left_out = (_not_convertible(uid, vessel, side, edv),)
    return [_Spectrum(uid, vessel, side, psv_cm_s, edv_cm_s, left_out)], []


def evaluate_study(
    summaries: Mapping[str, Mapping[str, Any]], rule: StudyRule = SRU_ICA_CCA
) -> list[StudyEvaluation]:
    """Apply ``rule`` to each side of a study holding ICA and CCA spectra.

    ``summaries`` maps each instance's SOP Instance UID to its JSON summary.
    """
    spectra: list[_Spectrum] = []
    refused: list[tuple[str, Finding]] = []
    for uid, summary in sorted(summaries.items()):
        found, not_read = _spectra(uid, summary)
        spectra += found
        refused += not_read
    out: list[StudyEvaluation] = []
    for side in sorted({s.side for s in spectra}):
        icas = [s for s in spectra if s.side == side and s.vessel == "ica"]
        ccas = [s for s in spectra if s.side == side and s.vessel == "cca"]
        if not icas or not ccas:
            continue
        ica = max(icas, key=lambda s: s.psv.value)
        cca_psv = sum(s.psv.value for s in ccas) / len(ccas)
        if cca_psv <= 0:
            continue
        left_out = tuple(f for s, f in refused if s == side) + ica.left_out
        out.append(_evaluate(rule, side, ica, ccas, cca_psv, left_out))
    return out


def _evaluate(
    rule: StudyRule,
    side: str,
    ica: _Spectrum,
    ccas: list[_Spectrum],
    cca_psv: float,
    left_out: tuple[Finding, ...],
) -> StudyEvaluation:
    ica_psv = ica.psv
    values = {_PSV: ica_psv.value, _RATIO: round(ica_psv.value / cca_psv, 3)}
    measured = {_PSV: ica_psv}
    evidence = [ica_psv]
    if ica.edv is not None:
        values[_EDV] = ica.edv.value
        measured[_EDV] = ica.edv
        evidence.append(ica.edv)
    cca_sites = [s.psv.details.get("finding_site") for s in ccas]
    cca = Quantity(
        "peak_systolic_velocity",
        CODES["peak_systolic_velocity"][0],
        round(cca_psv, 4),
        _CM_S,
        None,
        {
            "finding_site": cca_sites[0],
            "sop_instance_uids": [s.sop_instance_uid for s in ccas],
            "per_spectrum": [s.psv.value for s in ccas],
        },
    )
    ratio = Quantity(
        "ica_cca_psv_ratio",
        ICA_CCA_RATIO,
        values[_RATIO],
        "1",
        None,
        {"finding_site": ica_psv.details.get("finding_site")},
    )
    evidence += [cca, ratio]
    primary = rule.category(rule.primary, values[rule.primary])
    assert primary is not None  # the bands cover [0, inf)
    per = {p: rule.category(p, v) for p, v in values.items()}
    stated = "; ".join(_stated(p, v, per[p], measured.get(p)) for p, v in values.items())
    if not primary.graded:
        verdict = f"The ICA PSV, the primary criterion, is {primary.statement}."
    else:
        agree = all(c is not None and c.name == primary.name for c in per.values())
        verdict = (
            "The ICA PSV, the primary criterion, meets the SRU consensus criterion for "
            f"{primary.statement}"
            + (
                "; the additional parameters agree."
                if agree
                else "; the parameters disagree, so check the angle correction, the sampling "
                "site (highest ICA velocity, CCA below the bulb) and contralateral or cardiac "
                "causes."
            )
        )
    left = "".join(f" {finding.text}" for finding in left_out)
    text = (
        f"{SUPPORT}: in the {side} carotid, labelled ICA and CCA spectra give {stated}. "
        f"{verdict}{left} Please confirm the vessels and traces; plaque on B-mode, near and "
        "total occlusion are for the reviewing expert to judge."
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
        side,
        recommendation,
        ica.sop_instance_uid,
        tuple(s.sop_instance_uid for s in ccas),
        left_out,
    )


def _stated(
    parameter: str, value: float, category: Category | None, quantity: Quantity | None
) -> str:
    if category is None:
        band = "no band"
    else:
        band = category.statement if category.graded else "not graded"
    measured = (quantity.details.get("measured") if quantity is not None else None) or {}
    converted = f", measured as {measured['value']:g} {measured['unit']}" if measured else ""
    return f"{_WORDS[parameter]} {_fmt(parameter, value)}{converted} (band: {band})"


def _fmt(parameter: str, value: float) -> str:
    return f"{value:.2f}" if parameter == _RATIO else f"{value:.1f} cm/s"
