"""The DICOM Structured Report of automatic results, built with highdicom.

A Comprehensive SR whose content is a TID 1500 Measurement Report:

- one measurement group (TID 1501) per processor that measured something, with its
  algorithm identification (name, version, parameters: the provenance), each quantity as
  a TID 300 measurement coded as the processor coded it (LOINC, DCM...) with its UCUM
  unit, and a reference to the source instance (group and measurement);
- a "Qualitative Evaluations" container (TID 1500 row 12) with the findings and the
  recommendations as text, each with its evidence: a finding's values as text, a
  recommendation's quantities as coded numbers, its criterion and published source;
  processors that failed are listed there too.

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
from pydicom.uid import generate_uid

from usreview.processing.results import ProcessorResult, Quantity, ResultStatus

__all__ = ["MANUFACTURER", "build_sr"]

MANUFACTURER = "usreview"
_PRIVATE = "99USREVIEW"
_ULTRASONOGRAPHY = CodedConcept("16310003", "SCT", "Ultrasonography")
_QUALITATIVE = CodedConcept("126010", "DCM", "Qualitative Evaluations")
_FINDING = CodedConcept("121071", "DCM", "Finding")
_RECOMMENDATION = CodedConcept("121075", "DCM", "Recommendation")
_EVIDENCE = CodedConcept("evidence", _PRIVATE, "Evidence")
_CRITERION = CodedConcept("criterion", _PRIVATE, "Criterion applied")
_SOURCE = CodedConcept("source", _PRIVATE, "Published source")
_FAILURE = CodedConcept("processing_failure", _PRIVATE, "Processing failure")
_CONTAINS = RelationshipTypeValues.CONTAINS
_INFERRED = RelationshipTypeValues.INFERRED_FROM
_PROPERTIES = RelationshipTypeValues.HAS_PROPERTIES


def build_sr(
    source: Dataset,
    results: Sequence[ProcessorResult],
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
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
    return hd.sr.ComprehensiveSR(
        evidence=[source],
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
                referenced_images=[reference],
            )
            for q in result.output.quantities
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def _concept(quantity: Quantity) -> CodedConcept:
    code = quantity.code
    return CodedConcept(code.value, code.scheme.value, code.meaning)


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
            children.append(_text_item(_CRITERION, f"{rec.rule}: {rec.criterion}", _PROPERTIES))
            children.append(_text_item(_SOURCE, rec.source, _PROPERTIES))
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
