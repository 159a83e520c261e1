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
  comment (121106, DCM) it is inferred from; a recommendation's quantities as coded
  numbers, and its rule as a table of values (121424, DCM) with that table's citation
  (121422, DCM), the "Equation or Table" concepts (CID 228) that TID 300 uses for what a
  value was derived with; processors that failed are listed there too, as failed
  analyses (111024, DCM).

Every concept is a standard one (DCM, LOINC, SNOMED CT, UMLS, UCUM) unless a processor
codes a quantity with the private scheme ``99USREVIEW``; a private scheme in use is
declared in the Coding Scheme Identification Sequence (0008,0110), as the SOP Common
module asks. (dicom3tools' dciodvfy still warns about any designator it does not know,
declared or not: hence standard codes wherever one fits.)

The document is marked preliminary and unverified: decision support for the reviewing
expert, not a report signed by one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept, RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from usreview.processing.results import CodingScheme, ProcessorResult, Quantity, ResultStatus

__all__ = ["MANUFACTURER", "build_sr"]

MANUFACTURER = "usreview"
_ULTRASONOGRAPHY = CodedConcept("16310003", "SCT", "Ultrasonography")
_QUALITATIVE = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_FINDING = CodedConcept("121071", "DCM", "Finding")
_RECOMMENDATION = CodedConcept("121075", "DCM", "Recommendation")
_EVIDENCE = CodedConcept("121106", "DCM", "Comment")
_CRITERION = CodedConcept("121424", "DCM", "Table of Values")
_SOURCE = CodedConcept("121422", "DCM", "Table of Values Citation")
_FAILURE = CodedConcept("111024", "DCM", "Failed Analyses")
# Private coding schemes: name and responsible organisation, as declared in (0008,0110).
_PRIVATE_SCHEMES = {
    CodingScheme.USREVIEW.value: (
        "usreview concepts without a standard code",
        "usreview (automatic ultrasound processing)",
    ),
}
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
        procedure_reported=_ULTRASONOGRAPHY,
        imaging_measurements=groups,
    )
    evaluations = _evaluations(results)
    if evaluations:
        container = hd.sr.ContainerContentItem(name=_QUALITATIVE, relationship_type=_CONTAINS)
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
    )
    _declare_private_schemes(document)
    return document


def _declare_private_schemes(document: Dataset) -> None:
    """List the private coding schemes the content uses in (0008,0110)."""
    used = {
        str(element.value)
        for element in document.iterall()
        if element.keyword == "CodingSchemeDesignator" and str(element.value).startswith("99")
    }
    items = []
    for designator in sorted(used):
        item = Dataset()
        item.CodingSchemeDesignator = designator
        name, organization = _PRIVATE_SCHEMES.get(designator, ("private coding scheme", ""))
        item.CodingSchemeName = name
        if organization:
            item.CodingSchemeResponsibleOrganization = organization
        items.append(item)
    if items:
        document.CodingSchemeIdentificationSequence = DicomSequence(items)


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


def _evaluations(results: Sequence[ProcessorResult]) -> list[hd.sr.ContentItem]:
    items: list[hd.sr.ContentItem] = []
    for result in results:
        for finding in result.output.findings:
            item = _text_item(_FINDING, finding.text, _CONTAINS)
            if finding.evidence:
                item.ContentSequence = hd.sr.ContentSequence(
                    [_text_item(_EVIDENCE, _evidence_text(finding.evidence), _INFERRED)]
                )
            items.append(item)
        for rec in result.output.recommendations:
            item = _text_item(_RECOMMENDATION, rec.text, _CONTAINS)
            children: list[hd.sr.ContentItem] = [
                hd.sr.NumContentItem(
                    name=_concept(q),
                    value=q.value,
                    unit=CodedConcept(q.unit, "UCUM", q.unit),
                    relationship_type=_INFERRED,
                )
                for q in rec.evidence
            ]
            children.append(_text_item(_CRITERION, f"{rec.rule}: {rec.criterion}", _INFERRED))
            children.append(_text_item(_SOURCE, rec.source, _INFERRED))
            item.ContentSequence = hd.sr.ContentSequence(children)
            items.append(item)
        if result.status is ResultStatus.FAILED and result.reason:
            items.append(_text_item(_FAILURE, result.reason, _CONTAINS))
    return items


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
