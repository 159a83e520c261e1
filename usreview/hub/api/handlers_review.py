"""What reviewers read: the worklist, one study, an instance and its automatic analysis.

``GET /studies`` (the worklist), ``GET /studies/{uid}`` (series, instances with their
analyses and processing, the study-level evaluation, history, claim, reports),
``GET /studies/{uid}/priors`` (the patient's other studies at the study's site:
:meth:`usreview.store.review.ReviewStore.priors`),
``GET /instances/{uid}`` (the DICOM), ``GET /instances/{uid}/frames/{number}`` (one
display frame as PNG, rendered once: :mod:`usreview.hub.api.frames`) and
``GET /instances/{uid}/analysis``. A reviewer restricted to some sites reads only theirs
(:meth:`usreview.store.review.ReviewStore.reviewer`). An instance is stored as the site's
envelope; reading it opens the envelope into the quarantine folder
(:mod:`usreview.hub.api.plaintext`), removes the file once it is open, and streams it. The
study-level evaluation (:func:`study_evaluation`) is the study rule applied to the
instances' latest analyses, as the processing worker applies it, with the current
version of the study summary it sent the site. The read is audited before any byte
leaves. A caller without the review scope, or a reviewer outside the study's site, gets
the 404 of a missing study or instance.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from usreview.dicom.header import is_uid
from usreview.hub.api.base import BaseHandler
from usreview.hub.api.errors import ApiError, not_found
from usreview.hub.api.frames import FRAMES
from usreview.hub.api.plaintext import open_stored
from usreview.hub.api.views import (
    entry_view,
    instance_view,
    report_view,
    study_evaluation_view,
)
from usreview.hub.api.worklist_cache import etag_of
from usreview.hub.audit import AuditAction
from usreview.processing.recommendations.study import SRU_ICA_CCA, evaluate_study
from usreview.processing.study_results import VERSION as STUDY_RULE_VERSION
from usreview.processing.study_results import evaluation_signature
from usreview.store import (
    InstanceRecord,
    ResultFeed,
    Reviewer,
    StudyStatus,
)
from usreview.store.records import validate_site

if TYPE_CHECKING:
    from usreview.hub.api.app import ServiceContext

__all__ = [
    "AnalysisHandler",
    "FrameHandler",
    "PriorsHandler",
    "StudiesHandler",
    "StudyHandler",
    "open_instance",
    "send_instance",
    "study_evaluation",
]

_CHUNK = 1024 * 1024
#: Thumbnail sizes a caller may ask for (``?rows=``).
THUMBNAIL_ROWS = range(16, 1025)


class StudiesHandler(BaseHandler):
    """``GET /studies?site=&status=``: the worklist the reviewer may read, newest first."""

    async def get(self) -> None:
        """List studies (reviewers only: 403 for anybody else)."""
        reviewer = await self.reviewer()
        site = self.get_query_argument("site", None)
        if site is not None:
            validate_site(site)  # 400: not a site's name
        status = self.get_query_argument("status", None)
        if status is not None and status not in {s.value for s in StudyStatus}:
            choices = ", ".join(s.value for s in StudyStatus)
            raise ApiError(400, "bad_request", f"status must be one of {choices}")
        review = self.context.archive.review

        def compute() -> list[dict[str, Any]]:
            entries = review.worklist(reviewer, status=status, site=site)
            return [entry_view(e) for e in entries]

        # One cached answer per filter and set of sites serves every reviewer alike: its
        # ETag is that of what this reviewer may read.
        sites = "*" if reviewer.sites is None else ",".join(sorted(reviewer.sites))
        key = (type(reviewer).__name__, sites, status or "", site or "")
        answer = await self.blocking(self.context.worklist.get, key, compute)
        if self.answer_unchanged(answer.etag):
            return
        await self.audit(AuditAction.READ, detail={"count": answer.count, "site": site})
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(answer.body)


class StudyHandler(BaseHandler):
    """``GET /studies/{uid}``: one study, its series and instances, history, claim, reports.

    ``known_sites`` lists the registered sites (a report's possible recipients).
    """

    async def get(self, study_instance_uid: str) -> None:
        """Describe one study."""
        hide = ("study", study_instance_uid)
        reviewer = await self.reviewer(hide=hide)
        if not is_uid(study_instance_uid):
            raise not_found(*hide)
        detail = await self.blocking(_study_detail, self.context, reviewer, study_instance_uid)
        body = json.dumps(detail).encode()
        if self.answer_unchanged(etag_of(body)):
            return
        await self.audit(AuditAction.READ, detail={"site": detail["site"]})
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(body)


class PriorsHandler(BaseHandler):
    """``GET /studies/{uid}/priors``: the patient's other studies at the study's site."""

    async def get(self, study_instance_uid: str) -> None:
        """``{"priors": [Study...]}``, newest first (:meth:`ReviewStore.priors`)."""
        reviewer = await self.study_reviewer(study_instance_uid)
        review = self.context.archive.review
        priors = await self.blocking(review.priors, reviewer, study_instance_uid)
        studies = [p.study_instance_uid for p in priors]
        await self.audit(AuditAction.READ, detail={"count": len(priors), "studies": studies})
        self.write_json({"priors": [entry_view(p) for p in priors]})


class AnalysisHandler(BaseHandler):
    """``GET /instances/{uid}/analysis``: the instance's automatic results (JSON)."""

    async def get(self, sop_instance_uid: str) -> None:
        """The latest analysis; 404 while there is none."""
        hide = ("analysis of instance", sop_instance_uid)
        reviewer = await self.reviewer(hide=hide)
        if not is_uid(sop_instance_uid):
            raise not_found(*hide)
        review = self.context.archive.review
        analysis = await self.blocking(review.analysis, reviewer, sop_instance_uid)
        await self.audit(
            AuditAction.READ,
            detail={"study": analysis.study_instance_uid, "signature": analysis.signature},
        )
        self.write_json(dict(analysis.summary))


class FrameHandler(BaseHandler):
    """``GET /instances/{uid}/frames/{number}?rows=``: one display frame as PNG.

    The frame the viewers show (8-bit grey or RGB), numbered from 1; with ``rows`` a
    thumbnail of at least that many rows (16-1024). Rendered once per instance and
    frame, then answered from memory; checked and audited like the instance itself.
    """

    async def get(self, sop_instance_uid: str, number: str) -> None:
        """The PNG; 400 for a frame or size out of range."""
        hide = ("instance", sop_instance_uid)
        reviewer = await self.reviewer(hide=hide)
        if not is_uid(sop_instance_uid):
            raise not_found(*hide)
        rows = _rows(self.get_query_argument("rows", None))
        record = await self.blocking(self.context.archive.get, reviewer, sop_instance_uid)
        frame = int(number)
        data = await self.blocking(
            FRAMES.png,
            record.plaintext_sha256,
            frame,
            rows,
            lambda: _display_frame(self.context, reviewer, record, frame),
        )
        await self.audit(
            AuditAction.READ,
            detail={"site": record.site, "study": record.study_instance_uid, "frame": frame},
        )
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "private, no-store")
        self.finish(data)


def _rows(value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) not in THUMBNAIL_ROWS:
        raise ApiError(
            400,
            "bad_request",
            f"rows must be a whole number from {THUMBNAIL_ROWS[0]} to {THUMBNAIL_ROWS[-1]}",
        )
    return int(value)


def _display_frame(
    context: ServiceContext, reviewer: Reviewer, record: InstanceRecord, number: int
) -> npt.NDArray[np.uint8]:
    """Frame ``number`` (from 1) of the stored instance, as the viewers show it."""
    from usreview.dicom import read

    path = open_instance(context, reviewer, record)
    try:
        instance = read(path)
        count = instance.number_of_frames
        if not 1 <= number <= count:
            raise ApiError(400, "bad_request", f"frame {number} is outside 1-{count}")
        return np.array(instance.display_frame(number - 1), dtype=np.uint8, copy=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _study_detail(context: ServiceContext, reviewer: Reviewer, uid: str) -> dict[str, Any]:
    archive = context.archive
    review = archive.review
    entry = review.entry(reviewer, uid)
    # The instances first: each commits with its job, so every one listed has its state
    # in what is read next (the other way, one stored in between had none).
    records = archive.list_instances(reviewer, study_instance_uid=uid)
    states = review.instance_states(reviewer, uid)
    series: dict[str, dict[str, Any]] = {}
    for record in records:
        state = states.get(record.sop_instance_uid)
        item = series.setdefault(
            record.series_instance_uid,
            {
                "series_instance_uid": record.series_instance_uid,
                "manufacturer": state.manufacturer if state else None,
                "model_name": state.model_name if state else None,
                "instances": [],
            },
        )
        item["instances"].append(instance_view(record, state))
    return {
        **entry_view(entry),
        "patient_birth_date": entry.patient_birth_date,
        "patient_sex": entry.patient_sex,
        "study_time": entry.study_time,
        "referring_physician_name": entry.referring_physician_name,
        "series": list(series.values()),
        "history": [
            {
                "status": change.status.value,
                "previous": change.previous.value if change.previous else None,
                "at": change.at.isoformat(),
                "reason": change.reason,
                "actor": change.actor,
            }
            for change in archive.history(reviewer, uid)
        ],
        "study_evaluation": study_evaluation(
            archive.results,
            uid,
            {k: s.analysis for k, s in states.items() if s.analysis is not None},
        ),
        "reports": [report_view(r) for r in review.reports(reviewer, uid)],
        "known_sites": list(context.site_keys),
    }


def study_evaluation(
    feed: ResultFeed, study_instance_uid: str, summaries: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The study-level evaluation of a study whose instances' latest analyses are ``summaries``.

    ``None`` when no side of the study holds labelled ICA and CCA spectra. Its
    ``published`` is the study summary the worker sent the site (lineage
    ``auto-study/STUDY/summary``, see :mod:`usreview.processing.study_results`) if the
    current version holds these evaluations: superseded versions are never shown.
    """
    evaluations = evaluate_study(summaries)
    if not evaluations:
        return None
    signature = evaluation_signature(evaluations)
    prefix = f"auto-study/{study_instance_uid}/summary/"
    current = [(r, k) for r, k in feed.keyed_results(prefix) if r.superseded_by is None]
    published = None
    if current and current[-1][1][len(prefix) :].split("/")[0] == signature:
        published = current[-1][0]
    return study_evaluation_view(
        evaluations,
        rule=SRU_ICA_CCA.name,
        version=STUDY_RULE_VERSION,
        signature=signature,
        published=published,
    )


def open_instance(context: ServiceContext, reviewer: Reviewer, record: InstanceRecord) -> Path:
    """Open the stored instance ``record`` into a new quarantine file; return its path.

    See :func:`~usreview.hub.api.plaintext.open_stored`; the caller removes the file.

    Raises
    ------
    CorruptObjectError
        The envelope does not open or its plaintext is not what was stored.
    """
    out = context.ingestor.quarantine_dir / f"{secrets.token_hex(16)}.read"
    open_stored(
        context.archive,
        reviewer,
        record,
        out,
        hub_keys=context.ingestor.opening_keys,
        site_keys=context.site_keys,
    )
    return out


async def send_instance(handler: BaseHandler, sop_instance_uid: str) -> None:
    """Answer ``GET /instances/{uid}`` on ``handler``: the plaintext DICOM."""
    hide = ("instance", sop_instance_uid)
    reviewer = await handler.reviewer(hide=hide)
    if not is_uid(sop_instance_uid):
        raise not_found(*hide)
    record = await handler.blocking(handler.context.archive.get, reviewer, sop_instance_uid)
    path = await handler.blocking(open_instance, handler.context, reviewer, record)
    with open(path, "rb") as f:
        path.unlink()  # read from the open file: no plaintext left however the answer ends
        await handler.audit(
            AuditAction.READ,
            detail={"site": record.site, "study": record.study_instance_uid, "size": record.size},
        )
        handler.set_header("Content-Type", "application/dicom")
        handler.set_header("Content-Length", str(record.size))
        handler.set_header(
            "Content-Disposition", f'attachment; filename="{record.sop_instance_uid}.dcm"'
        )
        while chunk := f.read(_CHUNK):
            handler.write(chunk)
            await handler.flush()
        handler.finish()
