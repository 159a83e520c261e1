"""Processor ``vascular_rules``: published Doppler criteria as data, applied to measured values.

Each :class:`Rule` names the quantity it reads, its bands (in the quantity's unit, each end
open or closed as the published criterion words it: "125-230" holds both ends, "> 230" not
its lower one), the vessel it is meant for and its published source.
When the image names the vessel sampled (:mod:`usreview.processing.quantification.vessel`),
a rule for another vessel is not applied and the recommendation names the vessel as
labelled; otherwise it says for which vessel the rule holds. Either way the vessel, and the
diagnosis, stay the reviewing expert's judgement. Rules that combine spectra of several
vessels (the ICA/CCA ratio) run on the study: :mod:`.study`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from usreview.dicom import ImageKind
from usreview.processing.quantification.vessel import Vessel, vessel_of
from usreview.processing.registry import Context, processor
from usreview.processing.results import Output, Quantity, Recommendation

__all__ = ["RULES", "Band", "Closed", "Rule", "apply_rule", "vascular_rules", "within"]

SUPPORT = "Decision support for the reviewing expert, not a diagnosis"

#: Which ends of a range belong to it: ``"left"`` is ``[low, high)``, ``"both"`` is
#: ``[low, high]``, ``"right"`` is ``(low, high]``, ``"neither"`` is ``(low, high)``.
Closed = Literal["left", "right", "both", "neither"]


def within(value: float, low: float, high: float, closed: Closed = "left") -> bool:
    """Whether ``value`` lies in the range from ``low`` to ``high`` closed at ``closed``."""
    above = value >= low if closed in ("left", "both") else value > low
    below = value <= high if closed in ("right", "both") else value < high
    return above and below


@dataclass(frozen=True)
class Band:
    """A range of the measured value (``[low, high)`` unless ``closed`` says otherwise) and
    what the rule says of it."""

    low: float
    high: float
    category: str
    statement: str
    closed: Closed = "left"

    def holds(self, value: float) -> bool:
        """Whether ``value`` falls in this band."""
        return within(value, self.low, self.high, self.closed)


@dataclass(frozen=True)
class Rule:
    """A published criterion on one measured quantity."""

    name: str
    quantity: str
    vessel: str
    criterion: str
    source: str
    bands: tuple[Band, ...]
    vessels: tuple[str, ...] = ()
    """Short names of the vessels it applies to (:data:`~.vessel.VESSELS`); empty: any."""


RULES: tuple[Rule, ...] = (
    Rule(
        name="sru_ica_stenosis_psv",
        quantity="peak_systolic_velocity",
        vessel="internal carotid artery",
        criterion="ICA PSV < 125 cm/s: normal or < 50% (plaque decides); 125-230 cm/s: 50-69%; "
        "> 230 cm/s: >= 70% stenosis (primary criterion; ICA/CCA ratio and ICA EDV are secondary)",
        source="Grant EG et al. Carotid artery stenosis: gray-scale and Doppler US diagnosis - "
        "Society of Radiologists in Ultrasound Consensus Conference. Radiology 2003;229:340-346",
        bands=(
            Band(0.0, 125.0, "ica_below_50", "normal or < 50% stenosis (plaque on B-mode decides)"),
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
    ),
    Rule(
        name="sru_ica_stenosis_edv",
        quantity="end_diastolic_velocity",
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
        vessel="intrarenal (interlobar or segmental) artery",
        criterion="renal RI > 0.70 is commonly taken as abnormal in adults",
        source="Tublin ME, Bude RO, Platt JF. The resistive index in renal Doppler sonography: "
        "where do we stand? AJR 2003;180:885-892",
        bands=(
            Band(
                0.70, math.inf, "renal_ri_elevated", "an elevated resistive index", closed="neither"
            ),
        ),
        vessels=("renal",),
    ),
)


def apply_rule(
    rule: Rule, quantity: Quantity, vessel: Vessel | None = None
) -> Recommendation | None:
    """The recommendation of ``rule`` for the measured ``quantity`` (``None`` outside its bands).

    ``vessel`` is the vessel the image names: ``None`` when it names none, and then the
    text says for which vessel the rule holds; a vessel the rule is not for gives ``None``.
    """
    if vessel is not None and rule.vessels and vessel.name not in rule.vessels:
        return None
    for band in rule.bands:
        if band.holds(quantity.value):
            value = (
                f"{quantity.value:g} {quantity.unit}"
                if quantity.unit != "1"
                else (f"{quantity.value:.2f}")
            )
            cycles = f" (mean of {quantity.cycles} cycles)" if quantity.cycles else ""
            where = (
                f"if this spectrum was sampled in the {rule.vessel}"
                if vessel is None
                else f"in this spectrum, labelled as the {vessel.label} ({vessel.source})"
            )
            text = (
                f"{SUPPORT}: {where}, the measured "
                f"{quantity.name.replace('_', ' ')} of {value}{cycles} meets the published "
                f"criterion for {band.statement}. Please confirm the vessel, angle correction and "
                "the trace before using it."
            )
            return Recommendation(
                rule=rule.name,
                category=band.category,
                text=text,
                criterion=rule.criterion,
                source=rule.source,
                evidence=(quantity,),
            )
    return None


@processor(
    "vascular_rules",
    kinds={ImageKind.PW_DOPPLER},
    version="1.2",
    params={"source_processor": "doppler_indices"},
)
def vascular_rules(context: Context) -> Output:
    """Apply the published Doppler criteria (:data:`RULES`) to the measured indices."""
    measured = context.prior_quantities(str(context.params["source_processor"]))
    vessel = vessel_of(context.instance.dataset)
    recommendations = []
    for rule in RULES:
        quantity = measured.get(rule.quantity)
        if quantity is not None:
            recommendation = apply_rule(rule, quantity, vessel)
            if recommendation is not None:
                recommendations.append(recommendation)
    return Output(recommendations=tuple(recommendations))
