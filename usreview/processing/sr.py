"""The DICOM Structured Report of automatic results, built with highdicom.

A Comprehensive SR whose content is a TID 1500 Measurement Report:

- one measurement group (TID 1501) per processor that measured something, with its
  algorithm identification (name, version, parameters: the provenance), each quantity as
  a TID 300 measurement coded as the processor coded it (LOINC, DCM...) with its UCUM
  unit, its finding site when the quantity's ``details`` name one (``"finding_site"``:
  ``{"location": code, "laterality": code, "modifier": code}``, codes as
  :meth:`~usreview.processing.results.Code.as_dict` gives them, laterality and
  topographical modifier optional), and a reference to the source instance (group and measurement);
- a "Qualitative Evaluations" container (TID 1500, (C0034375, UMLS)) with the findings
  and the recommendations as text, each with its evidence: a finding's values as a
  comment (121106, DCM) it is inferred from; a recommendation's quantities as TID 300
  measurements, each with its finding site and the instance(s) it was measured on (an
  INFERRED FROM IMAGE "Source of Measurement" reference, from the quantity's ``details``
  ``"sop_instance_uid"`` or ``"sop_instance_uids"``, which must be the source or evidence
  instances), and its rule as a table of values (121424, DCM) with that table's citation
  (121422, DCM), the "Equation or Table" concepts (CID 228) that TID 300 uses for what a
  value was derived with; processors that failed are listed there too, as failed
  analyses (111024, DCM).

Every concept is a standard one (DCM, LOINC, SNOMED CT, UMLS, UCUM) unless a processor
codes a quantity with the private scheme ``99USREVIEW``; a private scheme in use is
declared in the Coding Scheme Identification Sequence (0008,0110), as the SOP Common
module asks. (dicom3tools' dciodvfy still warns about any designator it does not know,
declared or not: hence standard codes wherever one fits.)

The document is written in UTF-8 (Specific Character Set ``ISO_IR 192``) whatever the
source declares, and is marked preliminary and unverified: decision support for the
reviewing expert, not a report signed by one. Its Instance Creation and Content Date and
Time are local, as the derived images' (:func:`~usreview.processing.sr_codes.stamp_local_time`):
in the source's valid Timezone Offset From UTC (0008,0201), which the document then
carries, else in the hub's zone without an offset (the study date and time it copies are
in the site's zone, not known). The concepts and the declaration of private schemes are
shared with the reviewer's report (:mod:`usreview.processing.sr_codes`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept, RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from usreview.processing.results import ProcessorResult, Quantity, ResultStatus
from usreview.processing.sr_codes import (
    FINDING,
    QUALITATIVE_EVALUATIONS,
    RECOMMENDATION,
    SPECIFIC_CHARACTER_SET,
    ULTRASONOGRAPHY,
    declare_private_schemes,
    stamp_local_time,
)

__all__ = ["MANUFACTURER", "build_sr"]

MANUFACTURER = "usreview"
_EVIDENCE = CodedConcept("121106", "DCM", "Comment")
_CRITERION = CodedConcept("121424", "DCM", "Table of Values")
_SOURCE = CodedConcept("121422", "DCM", "Table of Values Citation")
_FAILURE = CodedConcept("111024", "DCM", "Failed Analyses")
_CONTAINS = RelationshipTypeValues.CONTAINS
_INFERRED = RelationshipTypeValues.INFERRED_FROM


def build_sr(
    source: Dataset,
    results: Sequence[ProcessorResult],
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    evidence: Sequence[Dataset] = (),
) -> hd.sr.ComprehensiveSR:
    """The SR of ``results`` obtained from the instance ``source`` (pixels not needed).

    Parameters
    ----------
    source
        The source instance's dataset: patient, study and references come from it.
    results
        What :func:`usreview.processing.run_pipeline` returned for it.
    sop_instance_uid, series_instance_uid
        UIDs of the new document (stable ones make re-delivery harmless).
    evidence
        Other instances of the study the results used (a study-level rule's spectra).
    """
    groups = [_group(source, r) for r in results if r.ok and r.output.quantities]
    if not groups:  # TID 1500 needs one group: an empty one still names the source
        groups = [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(source, "no measurements"),
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            )
        ]
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["usreview device", MANUFACTURER]),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=ULTRASONOGRAPHY,
        imaging_measurements=groups,
    )
    images = {str(ds.SOPInstanceUID): ds for ds in (source, *evidence)}
    evaluations = _evaluations(results, images)
    if evaluations:
        container = hd.sr.ContainerContentItem(
            name=QUALITATIVE_EVALUATIONS, relationship_type=_CONTAINS
        )
        container.ContentSequence = hd.sr.ContentSequence(evaluations)
        report[0].ContentSequence.append(container)
    document = hd.sr.ComprehensiveSR(
        evidence=[source, *evidence],
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=9001,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="usreview automatic measurements (decision support)",
        specific_character_set=SPECIFIC_CHARACTER_SET,
    )
    stamp_local_time(document, source, ("InstanceCreation", "Content"))
    declare_private_schemes(document)
    return document


def _tracking(source: Dataset, what: str) -> hd.sr.TrackingIdentifier:
    uid = generate_uid(entropy_srcs=[str(source.SOPInstanceUID), what])
    return hd.sr.TrackingIdentifier(uid=uid, identifier=what[:64])


def _algorithm(result: ProcessorResult) -> hd.sr.AlgorithmIdentification:
    provenance = result.provenance
    params = [f"{k}={_text(v)}" for k, v in sorted(provenance.parameters.items())]
    return hd.sr.AlgorithmIdentification(
        name=provenance.processor,
        version=provenance.version,
        parameters=params or None,
        manufacturer=MANUFACTURER,
    )


def _group(source: Dataset, result: ProcessorResult) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    name = result.provenance.processor
    reference = hd.sr.SourceImageForMeasurement.from_source_image(source)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(source, f"{name} measurements"),
        algorithm_id=_algorithm(result),
        measurements=[
            hd.sr.Measurement(
                name=_concept(q),
                value=q.value,
                unit=CodedConcept(q.unit, "UCUM", q.unit),
                finding_sites=_finding_sites(q),
                referenced_images=[reference],
            )
            for q in result.output.quantities
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def _concept(quantity: Quantity) -> CodedConcept:
    code = quantity.code
    return CodedConcept(code.value, code.scheme.value, code.meaning)


def _coded(value: Any, what: str) -> CodedConcept:
    if not isinstance(value, Mapping) or not {"value", "scheme", "meaning"} <= value.keys():
        raise ValueError(f"{what}: expected a code {{value, scheme, meaning}}, got {value!r}")
    return CodedConcept(str(value["value"]), str(value["scheme"]), str(value["meaning"]))


def _finding_sites(quantity: Quantity) -> list[hd.sr.FindingSite] | None:
    site = quantity.details.get("finding_site")
    if site is None:
        return None
    what = f"quantity {quantity.name}: details 'finding_site'"
    if not isinstance(site, Mapping):
        raise ValueError(f"{what}: expected {{location, modifier}}, got {site!r}")
    modifier, laterality = site.get("modifier"), site.get("laterality")
    return [
        hd.sr.FindingSite(
            anatomic_location=_coded(site.get("location"), f"{what} location"),
            laterality=None if laterality is None else _coded(laterality, f"{what} laterality"),
            topographical_modifier=None if modifier is None else _coded(modifier, what),
        )
    ]


def _evaluations(
    results: Sequence[ProcessorResult], images: Mapping[str, Dataset]
) -> list[hd.sr.ContentItem]:
    items: list[hd.sr.ContentItem] = []
    for result in results:
        for finding in result.output.findings:
            item = _text_item(FINDING, finding.text, _CONTAINS)
            if finding.evidence:
                item.ContentSequence = hd.sr.ContentSequence(
                    [_text_item(_EVIDENCE, _evidence_text(finding.evidence), _INFERRED)]
                )
            items.append(item)
        for rec in result.output.recommendations:
            item = _text_item(RECOMMENDATION, rec.text, _CONTAINS)
            children: list[hd.sr.ContentItem] = [_evidence_value(q, images) for q in rec.evidence]
            children.append(_text_item(_CRITERION, f"{rec.rule}: {rec.criterion}", _INFERRED))
            children.append(_text_item(_SOURCE, rec.source, _INFERRED))
            item.ContentSequence = hd.sr.ContentSequence(children)
            items.append(item)
        if result.status is ResultStatus.FAILED and result.reason:
            items.append(_text_item(_FAILURE, result.reason, _CONTAINS))
    return items


def _evidence_value(quantity: Quantity, images: Mapping[str, Dataset]) -> hd.sr.NumContentItem:
    """A value a recommendation is inferred from, as a TID 300 measurement.

    With its finding site and the instances it was measured on (``details``
    ``"sop_instance_uid"`` or ``"sop_instance_uids"``), so that the values of several
    vessels, sides or spectra can be told apart.
    """
    item = hd.sr.NumContentItem(
        name=_concept(quantity),
        value=quantity.value,
        unit=CodedConcept(quantity.unit, "UCUM", quantity.unit),
        relationship_type=_INFERRED,
    )
    children: list[hd.sr.ContentItem] = [*(_finding_sites(quantity) or [])]
    children += [
        hd.sr.SourceImageForMeasurement.from_source_image(images[uid])
        for uid in _measured_on(quantity, images)
    ]
    if children:
        item.ContentSequence = hd.sr.ContentSequence(children)
    return item


def _measured_on(quantity: Quantity, images: Mapping[str, Dataset]) -> list[str]:
    """The SOP Instance UIDs ``quantity``'s details name, each among ``images``."""
    details = quantity.details
    named = details.get("sop_instance_uids") or []
    uids = [details["sop_instance_uid"]] if "sop_instance_uid" in details else []
    if not isinstance(named, list | tuple):
        raise ValueError(f"quantity {quantity.name}: details 'sop_instance_uids' is not a list")
    for uid in [*uids, *named]:
        if uid not in images:
            raise ValueError(
                f"quantity {quantity.name}: instance {uid!r} of its details is not among the "
                "source and evidence instances"
            )
    return list(dict.fromkeys(str(uid) for uid in [*uids, *named]))


def _text_item(
    name: CodedConcept, value: str, relationship: RelationshipTypeValues
) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=relationship)


def _evidence_text(evidence: Mapping[str, Any]) -> str:
    return "; ".join(f"{key}: {_text(value)}" for key, value in evidence.items())


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)
