"""Study-level results: the study rules applied to a study's stored analyses.

When the queue worker has published an instance's results and the instance's summary holds
a Doppler spectrum labelled with its vessel, it reads the latest analyses of every instance
of the study from the archive and applies :func:`~usreview.processing.recommendations.study.
evaluate_study` (the SRU ICA/CCA criteria). If a side of the study has both an ICA and a CCA
spectrum, the study gets its own results for the site: a JSON summary (kind
``study-summary``) and a Comprehensive SR (kind ``sr``) whose evidence is the spectra used,
under the lineages ``auto-study/STUDY/summary`` and ``auto-study/STUDY/sr``. A newer
evaluation (another spectrum arrived, an instance was processed again) supersedes the
earlier one as instance results do (:mod:`usreview.processing.supersede`); the same
evaluation again publishes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from usreview.processing.recommendations.study import (
    KINDS,
    NAME,
    SRU_ICA_CCA,
    VERSION,
    StudyEvaluation,
    evaluate_study,
)
from usreview.processing.results import Output, ProcessorResult, Provenance, ResultStatus

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from usreview.processing.supersede import Publication
    from usreview.store import ResultFeed

__all__ = [
    "KINDS",
    "NAME",
    "STUDY_SUMMARY_KIND",
    "VERSION",
    "evaluation_signature",
    "labelled",
    "plan_study_results",
    "study_documents",
]

#: The results feed's kind of the study-level JSON summary.
STUDY_SUMMARY_KIND = "study-summary"
_NOTICE = (
    "Automatic study-level evaluation: decision support for the reviewing expert, not a "
    "diagnosis; not reviewed yet."
)


def labelled(summary: bytes | Mapping[str, Any] | None) -> bool:
    """Whether an instance's JSON summary holds a quantity with a finding site (a vessel)."""
    if summary is None:
        return False
    document = json.loads(summary) if isinstance(summary, bytes) else summary
    return any(
        isinstance(q, Mapping) and "finding_site" in (q.get("details") or {})
        for q in document.get("quantities") or []
    )


def evaluation_signature(evaluations: Sequence[StudyEvaluation]) -> str:
    """The digest of a study's evaluations (and of :data:`VERSION`) naming their documents."""
    text = json.dumps([e.as_dict() for e in evaluations], sort_keys=True, default=str)
    return hashlib.sha256(f"{VERSION}\n{text}".encode()).hexdigest()[:16]


def study_documents(
    study_instance_uid: str,
    evaluations: Sequence[StudyEvaluation],
    headers: Mapping[str, Dataset],
) -> tuple[str, bytes, bytes]:
    """The signature, SR and JSON summary of a study's evaluations.

    ``headers`` holds the datasets (pixels not needed) of the instances the evaluations used.
    The signature is a digest of the evaluations: the same values give the same documents.
    """
    from pydicom.uid import generate_uid  # with the SR's builder: the service reads

    from usreview.processing.sr import build_sr  # signatures without either

    signature = evaluation_signature(evaluations)
    first = evaluations[0]
    used = [first.ica_sop_instance_uid] + [
        uid
        for e in evaluations
        for uid in (e.ica_sop_instance_uid, *e.cca_sop_instance_uids)
        if uid != first.ica_sop_instance_uid
    ]
    used = list(dict.fromkeys(used))
    provenance = Provenance(
        SRU_ICA_CCA.name, VERSION, {}, first.ica_sop_instance_uid, study_instance_uid
    )
    result = ProcessorResult(
        provenance,
        ResultStatus.DONE,
        Output(
            findings=tuple(f for e in evaluations for f in e.findings),
            recommendations=tuple(e.recommendation for e in evaluations),
        ),
    )
    sr_uid = str(generate_uid(entropy_srcs=[study_instance_uid, "study sr", signature]))
    document = build_sr(
        headers[used[0]],
        [result],
        sop_instance_uid=sr_uid,
        series_instance_uid=str(generate_uid(entropy_srcs=[study_instance_uid, "sr"])),
        evidence=[headers[uid] for uid in used[1:]],
    )
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    summary = {
        "study_instance_uid": study_instance_uid,
        "rule": SRU_ICA_CCA.name,
        "version": VERSION,
        "evaluations": [e.as_dict() for e in evaluations],
        "instances": used,
        "sr_sop_instance_uid": sr_uid,
        "signature": signature,
        "notice": _NOTICE,
    }
    data = json.dumps(summary, indent=1, sort_keys=True, default=str).encode()
    return signature, buffer.getvalue(), data


def plan_study_results(
    feed: ResultFeed,
    study_instance_uid: str,
    summaries: Mapping[str, Mapping[str, Any]],
    header: Callable[[str], Dataset],
) -> Publication | None:
    """What to publish for the study given its instances' ``summaries``, or ``None``.

    ``header(uid)`` gives an instance's dataset (read only for the instances used).
    The JSON summary's item has kind :data:`STUDY_SUMMARY_KIND`.
    """
    evaluations = evaluate_study(summaries)
    if not evaluations:
        return None
    needed = {
        uid for e in evaluations for uid in (e.ica_sop_instance_uid, *e.cca_sop_instance_uids)
    }
    from usreview.processing.supersede import plan_documents

    headers = {uid: header(uid) for uid in sorted(needed)}
    signature, sr, summary = study_documents(study_instance_uid, evaluations, headers)
    plan = plan_documents(feed, f"auto-study/{study_instance_uid}", signature, sr, summary)
    items = tuple(
        replace(item, kind=STUDY_SUMMARY_KIND) if item.kind == "summary" else item
        for item in plan.items
    )
    return replace(plan, items=items)
