"""JSON views of the archive's records (the records stay the truth)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from usreview.processing.recommendations.study import SRU_ICA_CCA, StudyEvaluation
from usreview.store import InstanceRecord, ResultRecord
from usreview.store.review import InstanceState, ReportRecord
from usreview.store.worklist import ClaimRecord, WorklistEntry

__all__ = [
    "STUDY_EVALUATION_NOTICE",
    "claim_view",
    "entry_view",
    "instance_view",
    "iso",
    "report_view",
    "result_view",
    "study_evaluation_view",
]

#: What a study-level evaluation is, said wherever it is shown.
STUDY_EVALUATION_NOTICE = (
    "Automatic study-level evaluation: decision support for the reviewing expert, not a "
    "diagnosis; not reviewed yet."
)


def iso(moment: datetime) -> str:
    """``moment`` as ISO 8601 UTC text ending in ``Z``."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def entry_view(entry: WorklistEntry) -> dict[str, Any]:
    """The ``Study`` schema: a row of the worklist."""
    return {
        "study_instance_uid": entry.study_instance_uid,
        "site": entry.site,
        "status": entry.status.value,
        "reason": entry.reason,
        "series": entry.series,
        "instances": entry.instances,
        "received_at": iso(entry.created_at),
        "updated_at": iso(entry.status_changed_at),
        "patient_name": entry.patient_name,
        "patient_id": entry.patient_id,
        "study_description": entry.study_description,
        "study_date": entry.study_date,
        "accession_number": entry.accession_number,
        "kinds": [k.value for k in entry.kinds],
        "urgency": entry.urgency,
        "findings": list(entry.findings),
        "claim": None if entry.claim is None else claim_view(entry.claim),
        "failed_jobs": entry.failed_jobs,
        "reports": entry.reports,
    }


def claim_view(claim: ClaimRecord) -> dict[str, Any]:
    """The ``Claim`` schema."""
    return {
        "reviewer": claim.reviewer,
        "claimed_at": iso(claim.claimed_at),
        "expires_at": iso(claim.expires_at),
    }


def instance_view(record: InstanceRecord, state: InstanceState | None = None) -> dict[str, Any]:
    """One instance of a study (with its analysis and processing when ``state`` is given)."""
    view: dict[str, Any] = {
        "sop_instance_uid": record.sop_instance_uid,
        "sop_class_uid": record.sop_class_uid,
        "kinds": [k.value for k in record.kinds],
        "size": record.size,
        "plaintext_sha256": record.plaintext_sha256,
        "received_at": iso(record.received_at),
    }
    if state is not None:
        view["analysis"] = None if state.analysis is None else dict(state.analysis)
        view["processing"] = {"status": state.processing, "reason": state.reason}
    return view


def report_view(report: ReportRecord) -> dict[str, Any]:
    """The ``Report`` schema: one published version, its results and its content."""
    return {
        "version": report.version,
        "reviewer": report.reviewer,
        "published_at": iso(report.published_at),
        "urgency": report.urgency,
        "recipients": list(report.recipients),
        "sop_instance_uid": report.sop_instance_uid,
        "series_instance_uid": report.series_instance_uid,
        "results": report.cursors,
        "supersedes": report.supersedes,
        "content": dict(report.content),
    }


def result_view(record: ResultRecord) -> dict[str, Any]:
    """The ``ResultItem`` schema."""
    return {
        "id": record.cursor,
        "cursor": record.cursor,
        "study_instance_uid": record.study_instance_uid,
        "kind": record.kind,
        "label": record.label,
        "supersedes": record.supersedes,
        "size": record.envelope_size,
        "sha256": record.envelope_sha256,
        "published_at": iso(record.published_at),
    }


def study_evaluation_view(
    evaluations: Sequence[StudyEvaluation],
    *,
    rule: str,
    version: str,
    signature: str,
    published: ResultRecord | None,
) -> dict[str, Any]:
    """The ``StudyEvaluation`` schema: the study rule applied to each side of a study.

    ``published`` is the current (not superseded) study summary sent to the site, when it
    holds these evaluations (``None`` while the worker has not sent them yet).
    """
    statements = SRU_ICA_CCA.statements
    sides = []
    for evaluation in evaluations:
        view = evaluation.as_dict()
        view["statement"] = statements.get(evaluation.recommendation.category or "")
        view["values"] = _evaluation_values(evaluation)
        sides.append(view)
    used = [uid for e in evaluations for uid in (e.ica_sop_instance_uid, *e.cca_sop_instance_uids)]
    return {
        "rule": rule,
        "version": version,
        "signature": signature,
        "notice": STUDY_EVALUATION_NOTICE,
        "evaluations": sides,
        "instances": list(dict.fromkeys(used)),
        "published": None
        if published is None
        else {
            "result": published.cursor,
            "published_at": iso(published.published_at),
            "supersedes": published.supersedes,
        },
    }


def _evaluation_values(evaluation: StudyEvaluation) -> dict[str, float]:
    """``ica_psv``, ``cca_psv`` (mean of the side's CCA spectra), ``ica_cca_psv_ratio``
    and, when measured, ``ica_edv`` of one side's evaluation."""
    values: dict[str, float] = {}
    for quantity in evaluation.recommendation.evidence:
        if quantity.name == "peak_systolic_velocity":
            cca = "sop_instance_uids" in (quantity.details or {})
            values["cca_psv" if cca else "ica_psv"] = quantity.value
        elif quantity.name == "end_diastolic_velocity":
            values["ica_edv"] = quantity.value
        else:
            values[quantity.name] = quantity.value
    return values
