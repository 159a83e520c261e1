"""``GET /studies/{uid}/reports`` (every published version) and ``POST`` (publish one).

A report is published by the reviewer who holds the study's claim (409 otherwise), from a
JSON body of at most
:attr:`~usreview.hub.api.settings.ServiceSettings.max_report_bytes` (413) whose every
field is checked (400 naming the ``field``); :func:`usreview.hub.api.reporting.publish_report`
does the rest; a teaching case made of the study takes the new version's words
(:func:`~usreview.hub.api.teaching_cases.refresh_case_text`). Sites and trainees get the 404
of a missing study. Reading is audited as a read, publishing as a write.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from usreview.errors import ReportError
from usreview.hub.api.base import BaseHandler
from usreview.hub.api.errors import ApiError
from usreview.hub.api.views import iso, report_view
from usreview.hub.audit import AuditAction, AuditError
from usreview.store import Reviewer

if TYPE_CHECKING:
    from usreview.hub.api.app import ServiceContext
    from usreview.store.review import ReportRecord
    from usreview.store.teaching import TeachingCase

__all__ = ["ReportsHandler"]

_JSON = "application/json"
_log = logging.getLogger(__name__)

# The report's SR (highdicom, pydicom) and de-identification are imported by the first
# publication, in the thread pool (never on the event loop): the service starts, and
# starts again after a crash, without them.


def _publish(
    context: ServiceContext, reviewer: Reviewer, study_instance_uid: str, body: Any
) -> ReportRecord:
    """Check the report ``body``, then :func:`~usreview.hub.api.reporting.publish_report`."""
    from usreview.hub.api.reporting import publish_report
    from usreview.review.report import Report

    return publish_report(context, reviewer, study_instance_uid, Report.from_json(body))


def _refresh(
    context: ServiceContext, reviewer: Reviewer, study_instance_uid: str
) -> TeachingCase | None:
    """:func:`~usreview.hub.api.teaching_cases.refresh_case_text`."""
    from usreview.hub.api.teaching_cases import refresh_case_text

    return refresh_case_text(context, reviewer, study_instance_uid)


class ReportsHandler(BaseHandler):
    """The published versions of a study's report; publish a new one."""

    async def get(self, study_instance_uid: str) -> None:
        """``{"reports": [...]}``, oldest first."""
        reviewer = await self.study_reviewer(study_instance_uid)
        review = self.context.archive.review
        reports = await self.blocking(review.reports, reviewer, study_instance_uid)
        await self.audit(AuditAction.READ, detail={"count": len(reports)})
        self.write_json({"reports": [report_view(r) for r in reports]})

    async def post(self, study_instance_uid: str) -> None:
        """Publish a report: 201 with its version, SR UID, time and result cursors."""
        self.audit_action = AuditAction.WRITE
        reviewer = await self.study_reviewer(study_instance_uid)
        record = await self.blocking(
            _publish, self.context, reviewer, study_instance_uid, self._body()
        )
        self.context.worklist.invalidate()
        await self.audit(
            AuditAction.WRITE,
            "published",
            {
                "version": record.version,
                "sop_instance_uid": record.sop_instance_uid,
                "results": record.cursors,
                "recipients": list(record.recipients),
            },
        )
        await self._refresh_case(reviewer, study_instance_uid)
        self.write_json(
            {
                "version": record.version,
                "sop_instance_uid": record.sop_instance_uid,
                "published_at": iso(record.published_at),
                "results": record.cursors,
                "supersedes": record.supersedes,
            },
            status=201,
        )

    async def _refresh_case(self, reviewer: Reviewer, study_instance_uid: str) -> None:
        """Give the study's teaching case, if any, the new version's words (audited as a
        write of ``teaching/CASE``, outcome ``updated``).

        The report is published and audited before: whatever fails here is logged, and
        the case is brought up to date the next time the study is made a teaching case.
        """
        try:
            case = await self.blocking(_refresh, self.context, reviewer, study_instance_uid)
        except Exception:  # the publication stands; the case waits for the next one
            _log.exception("teaching case of study %s not updated", study_instance_uid)
            return
        if case is None:
            return
        try:
            await self.audit(
                AuditAction.WRITE,
                "updated",
                {"study": study_instance_uid},
                resource=f"teaching/{case.case_uid}",
            )
        except AuditError:  # a 503 would tell the reviewer the publication failed
            _log.exception("the update of teaching case %s is not audited", case.case_uid)

    def _body(self) -> Any:
        cap = self.context.settings.max_report_bytes
        if len(self.request.body) > cap:
            raise ApiError(413, "too_large", f"a report may be at most {cap} bytes")
        media = self.request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if media != _JSON:
            raise ApiError(415, "unsupported_media_type", f"send the report as {_JSON}")
        try:
            return json.loads(self.request.body, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise ReportError("report", "the body is not JSON") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
