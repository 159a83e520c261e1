"""The case library: reviewers make teaching cases of published studies; trainees learn
from them and scientists prototype on them.

- ``POST /teaching`` ``{"study_instance_uid": UID}`` (review scope): make the study a
  teaching case (:func:`usreview.hub.api.teaching_cases.make_case`): 201 with the case,
  200 with the one it has already. A study the reviewer may not see answers its 404.
- ``GET /teaching`` (review, train or research scope): ``{"cases": [...]}``, newest
  first. Reviewers read the library to open the similar cases their studies name.
- ``GET /teaching/{case}``: one case; ``GET /teaching/{case}/instances/{uid}``: one
  de-identified instance (DICOM), decrypted from its at-rest copy and checked against the
  hash recorded with it.
- ``DELETE /teaching/{case}`` (review scope, a reviewer who may see the source study):
  withdraw the case (text found burned into its images, say): 204, gone for everyone from
  then on (:meth:`usreview.store.teaching.TeachingStore.remove`). Trainees and scientists
  get 403; a case whose study the reviewer may not see answers the 404 of a missing one.

A caller without any of them (a site) gets 403 on the list and the 404 of a missing case
or instance on the others; trainees and
scientists never reach ``/studies``. A case shows the de-identified UIDs, kinds and the reviewer's
cleaned words, never the reviewer's name or a date. Every access is audited (reads
before any byte leaves).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from usreview.dicom.header import is_uid
from usreview.hub.api.base import BaseHandler
from usreview.hub.api.errors import ApiError, not_found
from usreview.hub.audit import AuditAction

if TYPE_CHECKING:
    from usreview.hub.api.app import ServiceContext
    from usreview.store import Reviewer
    from usreview.store.teaching import TeachingCase, TeachingStore

# De-identification (pydicom) is imported by the first request that needs it, in the thread
# pool (never on the event loop): the service starts, and starts again after a crash,
# without it.

__all__ = ["TeachingCaseHandler", "TeachingCasesHandler", "TeachingInstanceHandler", "case_view"]

_CHUNK = 1024 * 1024


def _store(context: ServiceContext) -> TeachingStore:
    """The case library (in the thread pool: the first call imports de-identification)."""
    from usreview.hub.api.teaching_cases import teaching_store

    return teaching_store(context)


def _make_case(
    context: ServiceContext, reviewer: Reviewer, study_instance_uid: str
) -> tuple[TeachingCase, bool]:
    """:func:`~usreview.hub.api.teaching_cases.make_case` (in the thread pool, as above)."""
    from usreview.hub.api.teaching_cases import make_case

    return make_case(context, reviewer, study_instance_uid)


def case_view(case: TeachingCase) -> dict[str, Any]:
    """The ``TeachingCase`` schema (what a trainee sees)."""
    from usreview.teaching import METHOD

    return {
        "case_uid": case.case_uid,
        "exam_type": case.exam_type,
        "findings": case.findings,
        "impression": case.impression,
        "recommendations": case.recommendations,
        "measurements": [dict(m) for m in case.measurements],
        "kinds": list(case.kinds),
        "instances": [
            {
                "sop_instance_uid": i.sop_instance_uid,
                "sop_class_uid": i.sop_class_uid,
                "kinds": list(i.kinds),
                "frames": i.frames,
                "size": i.size,
            }
            for i in case.instances
        ],
        "refused": list(case.refused),
        "deidentification": list(METHOD),
    }


class TeachingCasesHandler(BaseHandler):
    """List the teaching cases (reviewers, trainees, scientists); make one of a published
    study (reviewers)."""

    async def get(self) -> None:
        """``{"cases": [...]}``, newest first."""
        self.case_reader()
        cases = await self.blocking(lambda: _store(self.context).cases())
        await self.audit(AuditAction.READ, detail={"count": len(cases)})
        self.write_json({"cases": [case_view(c) for c in cases]})

    async def post(self) -> None:
        """Make a teaching case: 201 (made now) or 200 (the study's existing case)."""
        self.audit_action = AuditAction.WRITE
        uid = self._study_uid()
        reviewer = await self.study_reviewer(uid)
        case, made = await self.blocking(_make_case, self.context, reviewer, uid)
        await self.audit(
            AuditAction.WRITE,
            "created" if made else "allowed",
            {
                "study": uid,
                "case": case.case_uid,
                "instances": len(case.instances),
                "refused": len(case.refused),
            },
        )
        self.write_json(case_view(case), status=201 if made else 200)

    def _study_uid(self) -> str:
        media = self.request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, "unsupported_media_type", "send application/json")
        if len(self.request.body) > 4096:
            raise ApiError(413, "too_large", "the body may be at most 4096 bytes")
        try:
            body = json.loads(self.request.body)
        except (ValueError, RecursionError):
            raise ApiError(400, "bad_request", "the body is not JSON") from None
        uid = body.get("study_instance_uid") if isinstance(body, dict) else None
        if not isinstance(uid, str) or set(body) != {"study_instance_uid"}:
            raise ApiError(400, "bad_request", 'send {"study_instance_uid": UID} and nothing else')
        return uid


class TeachingCaseHandler(BaseHandler):
    """``GET /teaching/{case}``: one teaching case; ``DELETE``: withdraw it (reviewers)."""

    async def get(self, case_uid: str) -> None:
        """The case."""
        hide = ("teaching case", case_uid)
        self.case_reader(hide=hide)
        if not is_uid(case_uid):
            raise not_found(*hide)
        case = await self.blocking(lambda: _store(self.context).case(case_uid))
        await self.audit(AuditAction.READ, detail={"instances": len(case.instances)})
        self.write_json(case_view(case))

    async def delete(self, case_uid: str) -> None:
        """Withdraw the case: 204."""
        self.audit_action = AuditAction.WRITE
        hide = ("teaching case", case_uid)
        self.case_reader(hide=hide)  # a site: the 404 of a missing case
        reviewer = await self.reviewer()  # a trainee or a scientist: 403
        if not is_uid(case_uid):
            raise not_found(*hide)
        case = await self.blocking(lambda: _store(self.context).remove(reviewer, case_uid))
        await self.audit(
            AuditAction.WRITE, "withdrawn", {"case": case_uid, "instances": len(case.instances)}
        )
        self.set_status(204)
        self.finish()


class TeachingInstanceHandler(BaseHandler):
    """``GET /teaching/{case}/instances/{uid}``: one de-identified instance (DICOM)."""

    async def get(self, case_uid: str, sop_instance_uid: str) -> None:
        """The instance's DICOM file."""
        hide = ("instance", sop_instance_uid)
        self.case_reader(hide=hide)
        if not (is_uid(case_uid) and is_uid(sop_instance_uid)):
            raise not_found(*hide)
        item, data = await self.blocking(
            lambda: _store(self.context).read_instance(case_uid, sop_instance_uid)
        )
        await self.audit(AuditAction.READ, detail={"case": case_uid, "size": item.size})
        self.set_header("Content-Type", "application/dicom")
        self.set_header("Content-Length", str(item.size))
        self.set_header("Content-Disposition", f'attachment; filename="{sop_instance_uid}.dcm"')
        for start in range(0, len(data), _CHUNK):
            self.write(data[start : start + _CHUNK])
            await self.flush()
        self.finish()
