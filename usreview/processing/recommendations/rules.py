"""Processor ``vascular_rules``: published Doppler criteria as data, applied to measured values.

Each :class:`Rule` names the quantity it reads and its UCUM unit, its bands (in that unit,
each end open or closed as the published criterion words it: "125-230" holds both ends,
"> 230" not its lower one), the vessels it is meant for, whether it holds for adults only,
and its published source. A rule is applied only where it belongs:

- **The vessel.** A rule for a vessel grades a spectrum only when the image names that
  vessel (:mod:`usreview.processing.quantification.vessel`: coded anatomy first, then a
  conservative reading of text). A spectrum labelled as another vessel is not graded by
  it; one that names no vessel is not graded at all, and gets one ``vessel_not_labelled``
  finding that asks for the label (a PSV fits the carotid bands and an RI the renal band
  whichever vessel it came from).
- **The unit.** A value in another unit is converted when the units differ by an exact
  power of ten (:func:`~usreview.processing.units.convert`: m/s, cm/s, mm/s; ``%`` and the
  ratio ``1``), else the rule is skipped with a ``unit_not_convertible`` finding.
- **The patient.** A rule for adults is not applied to a patient younger than
  :data:`~.patient.ADULT_YEARS` (Patient's Age, else Birth Date with the Study Date:
  :mod:`.patient`); that gives an ``adult_criterion_not_applied`` finding. When the age
  is not recorded, the rule is applied and its text says so.

A band may be *ungraded* (:attr:`Band.graded`): the ICA's low-velocity band, where the SRU
consensus names no stenosis grade (near occlusion: "velocities may be high, low, or
undetectable"; total occlusion: no flow), asks the reviewer to exclude near or total
occlusion instead of grading. The vessel, and the diagnosis, stay the reviewing expert's
judgement. Rules that combine spectra of several vessels (the ICA/CCA ratio) run on the
study: :mod:`.study`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from usreview.dicom import ImageKind
from usreview.processing.quantification.vessel import VESSELS, Vessel, vessel_of
from usreview.processing.recommendations.patient import ADULT_YEARS, Age, age_of
from usreview.processing.registry import Context, processor
from usreview.processing.results import Finding, Output, Quantity, Recommendation
from usreview.processing.units import UNITS, convert

__all__ = [
    "LOW_ICA_PSV_CM_S",
    "RULES",
    "SRU_ICA_PSV",
    "UNITS",
    "Band",
    "Closed",
    "Rule",
    "apply_rule",
    "convert",
    "grade",
    "vascular_rules",
    "within",
]

SUPPORT = "Decision support for the reviewing expert, not a diagnosis"

#: Which ends of a range belong to it: ``"left"`` is ``[low, high)``, ``"both"`` is
#: ``[low, high]``, ``"right"`` is ``(low, high]``, ``"neither"`` is ``(low, high)``.
Closed = Literal["left", "right", "both", "neither"]

#: Below this ICA PSV the ICA PSV rule does not grade but asks to exclude near or total
#: occlusion. The SRU consensus gives near occlusion no velocity threshold ("velocities may
#: be high, low, or undetectable"): the limit is this product's prompt, a round number well
#: inside the consensus' "< 125 cm/s" band, with no published accuracy.
LOW_ICA_PSV_CM_S: Final = 50.0


def within(value: float, low: float, high: float, closed: Closed = "left") -> bool:
    """Whether ``value`` lies in the range from ``low`` to ``high`` closed at ``closed``."""
    above = value >= low if closed in ("left", "both") else value > low
    below = value <= high if closed in ("right", "both") else value < high
    return above and below


@dataclass(frozen=True)
class Band:
    """A range of the measured value (``[low, high)`` unless ``closed`` says otherwise) and
    what the rule says of it.

    ``graded`` is false for a range the published criterion does not grade: its
    ``statement`` then says what to check instead.
    """

    low: float
    high: float
    category: str
    statement: str
    closed: Closed = "left"
    graded: bool = True

    def holds(self, value: float) -> bool:
        """Whether ``value`` falls in this band."""
        return within(value, self.low, self.high, self.closed)


@dataclass(frozen=True)
class Rule:
    """A published criterion on one measured quantity, in its UCUM ``unit``."""

    name: str
    quantity: str
    unit: str
    vessel: str
    criterion: str
    source: str
    bands: tuple[Band, ...]
    vessels: tuple[str, ...] = ()
    """Short names of the vessels it applies to (:data:`~.vessel.VESSELS`); empty: any."""
    adults_only: bool = False
    """Whether the criterion holds for adults only (:mod:`.patient`)."""

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(
                f"Rule {self.name}: argument 'unit' {self.unit!r} is none of {sorted(UNITS)}"
            )
        if not self.bands:
            raise ValueError(f"Rule {self.name}: argument 'bands' is empty")
        unknown = sorted(set(self.vessels) - set(VESSELS))
        if unknown:
            raise ValueError(f"Rule {self.name}: argument 'vessels' names unknown {unknown}")


#: The ICA PSV rule: the primary SRU criterion, which grades the ICA PSV of one spectrum here
#: and of a study's highest ICA velocity in the study rule (:data:`.study.SRU_ICA_CCA`).
SRU_ICA_PSV: Final = Rule(
    name="sru_ica_stenosis_psv",
    quantity="peak_systolic_velocity",
    unit="cm/s",
    vessel="internal carotid artery",
    criterion="ICA PSV < 125 cm/s: normal or < 50% (plaque decides); 125-230 cm/s: 50-69%; "
    "> 230 cm/s: >= 70% stenosis (primary criterion; ICA/CCA ratio and ICA EDV are "
    "secondary). Near occlusion has no velocity threshold (velocities may be high, low or "
    f"undetectable) and total occlusion no flow, so a PSV < {LOW_ICA_PSV_CM_S:g} cm/s "
    "(this product's prompt, not a consensus value) is not graded: exclude them first",
    source="Grant EG et al. Carotid artery stenosis: gray-scale and Doppler US diagnosis - "
    "Society of Radiologists in Ultrasound Consensus Conference. Radiology 2003;229:340-346",
    bands=(
        Band(
            0.0,
            LOW_ICA_PSV_CM_S,
            "ica_low_psv",
            f"a low ICA velocity (< {LOW_ICA_PSV_CM_S:g} cm/s), which the SRU consensus "
            "does not grade: exclude near occlusion (a markedly narrowed lumen on colour "
            "or power Doppler, the string sign) and total occlusion (no flow) before "
            "reading it as normal or < 50% stenosis",
            graded=False,
        ),
        Band(
            LOW_ICA_PSV_CM_S,
            125.0,
            "ica_below_50",
            "normal or < 50% stenosis (plaque on B-mode decides)",
        ),
        Band(125.0, 230.0, "ica_50_69", "50-69% stenosis", closed="both"),
        Band(
            230.0,
            math.inf,
            "ica_70_or_more",
            ">= 70% stenosis (or near occlusion)",
            closed="neither",
        ),
    ),
    vessels=("ica",),
)

RULES: tuple[Rule, ...] = (
    SRU_ICA_PSV,
    Rule(
        name="sru_ica_stenosis_edv",
        quantity="end_diastolic_velocity",
        unit="cm/s",
        vessel="internal carotid artery",
        criterion="ICA EDV > 100 cm/s suggests >= 70% stenosis (secondary criterion)",
        source="Grant EG et al. Radiology 2003;229:340-346 (SRU consensus)",
        bands=(
            Band(
                100.0,
                math.inf,
                "ica_70_or_more_edv",
                ">= 70% stenosis (secondary, EDV)",
                closed="neither",
            ),
        ),
        vessels=("ica",),
    ),
    Rule(
        name="renal_resistive_index",
        quantity="resistive_index",
        unit="1",
        vessel="intrarenal (interlobar or segmental) artery",
        criterion="renal RI > 0.70 is commonly taken as abnormal in adults (adults only: "
        f"not applied under {ADULT_YEARS} years)",
        source="Tublin ME, Bude RO, Platt JF. The resistive index in renal Doppler sonography: "
        "where do we stand? AJR 2003;180:885-892",
        bands=(
            Band(
                0.70,
                math.inf,
                "renal_ri_elevated",
                "an elevated resistive index in adults",
                closed="neither",
            ),
        ),
        vessels=("renal",),
        adults_only=True,
    ),
)


def grade(rule: Rule, value: float) -> Band | None:
    """The band of ``rule`` that holds ``value`` (in the rule's unit), or ``None``.

    The one way a band is chosen: :func:`apply_rule` on a spectrum and the study rule on a
    study's ICA PSV (:mod:`.study`) both grade by it.
    """
    return next((band for band in rule.bands if band.holds(value)), None)


def _words(quantity: str) -> str:
    return quantity.replace("_", " ")


def _value(value: float, unit: str) -> str:
    return f"{value:.2f}" if unit == "1" else f"{value:g} {unit}"


def _label_the_vessel(rules: list[Rule], measured: dict[str, Quantity]) -> Finding:
    """The one finding for a spectrum that names no vessel, instead of every vessel's grade."""
    per_vessel: dict[str, list[str]] = {}
    for rule in rules:
        per_vessel.setdefault(rule.vessel, []).append(rule.name)
    which = "; ".join(f"{vessel}: {', '.join(names)}" for vessel, names in per_vessel.items())
    text = (
        "Not graded: the spectrum names no vessel; label the vessel to grade it. Each rule "
        f"holds for one vessel ({which}): code the vessel in the Anatomic Region Sequence "
        "(SNOMED CT), or name a carotid vessel in the Series Description (e.g. 'LT ICA')."
    )
    evidence = {
        "rules": [rule.name for rule in rules],
        "measured": {
            rule.quantity: _value(measured[rule.quantity].value, measured[rule.quantity].unit)
            for rule in rules
        },
    }
    return Finding("vessel_not_labelled", text, evidence)


def apply_rule(
    rule: Rule, quantity: Quantity, vessel: Vessel | None = None, *, age: Age | None = None
) -> Recommendation | Finding | None:
    """What ``rule`` says of the measured ``quantity``.

    ``vessel`` is the vessel the image names and ``age`` the patient's age at the study
    (``None``: not recorded). Gives ``None`` for a vessel the rule is not for, or a value
    outside every band; a :class:`Finding` when the rule cannot grade (no vessel named for
    a rule on one vessel, a unit that does not convert exactly, a child for a rule on
    adults); else the :class:`Recommendation`.
    """
    if rule.vessels and vessel is None:
        return _label_the_vessel([rule], {rule.quantity: quantity})
    if vessel is not None and rule.vessels and vessel.name not in rule.vessels:
        return None
    value = convert(quantity.value, quantity.unit, rule.unit)
    if value is None:
        return Finding(
            "unit_not_convertible",
            f"Not graded by {rule.name}: a {_words(quantity.name)} in {quantity.unit!r} does "
            f"not convert exactly to {rule.unit!r}, the rule's unit; check the measurement's "
            f"unit (value {quantity.value:g} {quantity.unit}).",
            {"rule": rule.name, "quantity": quantity.as_dict(), "rule_unit": rule.unit},
        )
    if rule.adults_only and age is not None and not age.adult:
        return Finding(
            "adult_criterion_not_applied",
            f"Not graded by {rule.name}: the published criterion holds for adults and the "
            f"patient is {age}; no criterion for children is applied, and the "
            f"{_words(quantity.name)} of {_value(value, rule.unit)} is for the reviewing expert "
            "to judge.",
            {"rule": rule.name, "age_years": round(age.years, 3), "age_source": age.source},
        )
    band = grade(rule, value)
    if band is None:
        return None
    measured = _value(value, rule.unit)
    notes = []
    if quantity.unit != rule.unit:
        notes.append(f"measured as {_value(quantity.value, quantity.unit)}")
    if quantity.cycles:
        notes.append(f"mean of {quantity.cycles} cycles")
    if notes:
        measured += f" ({'; '.join(notes)})"
    where = (
        f"if this spectrum was sampled in the {rule.vessel}"
        if vessel is None
        else f"in this spectrum, labelled as the {vessel.label} ({vessel.source})"
    )
    meets = (
        f"meets the published criterion for {band.statement}"
        if band.graded
        else f"is {band.statement}"
    )
    adults = ""
    if rule.adults_only:
        adults = (
            " The criterion holds for adults; the patient's age is not recorded, so confirm "
            "that the patient is an adult."
            if age is None
            else f" The criterion holds for adults: the patient is {age}."
        )
    text = (
        f"{SUPPORT}: {where}, the measured {_words(quantity.name)} of {measured} {meets}."
        f"{adults} Please confirm the vessel, angle correction and the trace before using it."
    )
    return Recommendation(
        rule=rule.name,
        category=band.category,
        text=text,
        criterion=rule.criterion,
        source=rule.source,
        evidence=(quantity,),
    )


@processor(
    "vascular_rules",
    kinds={ImageKind.PW_DOPPLER},
    version="1.3",
    params={"source_processor": "doppler_indices"},
)
def vascular_rules(context: Context) -> Output:
    """Apply the published Doppler criteria (:data:`RULES`) to the measured indices."""
    measured = context.prior_quantities(str(context.params["source_processor"]))
    dataset = context.instance.dataset
    vessel = vessel_of(dataset)
    age = age_of(dataset)
    applicable = [rule for rule in RULES if rule.quantity in measured]
    findings: list[Finding] = []
    recommendations: list[Recommendation] = []
    if vessel is None:
        unlabelled = [rule for rule in applicable if rule.vessels]
        if unlabelled:
            findings.append(_label_the_vessel(unlabelled, measured))
        applicable = [rule for rule in applicable if not rule.vessels]
    for rule in applicable:
        said = apply_rule(rule, measured[rule.quantity], vessel, age=age)
        if isinstance(said, Recommendation):
            recommendations.append(said)
        elif isinstance(said, Finding):
            findings.append(said)
    return Output(findings=tuple(findings), recommendations=tuple(recommendations))
