"""The base of the API's handlers: the caller's rights, JSON errors, the audit trail.

Every request leaves one audit line: handlers record their allowed accesses (a read is
recorded before any data leaves), and :meth:`BaseHandler.write_error` records every
refusal: 401, 403 and 404 as ``denial``, other errors under the handler's action.
A reviewer restricted to some sites is refused everything else with the 404 of a
missing record; the denial's audit line names the sites they are restricted to.
Trainees (``custom:usreview:train``) and scientists (``custom:usreview:research``) reach
only the de-identified case library (the teaching cases).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from usreview.dicom.header import is_uid
from usreview.hub.api.errors import ApiError, problem_for
from usreview.hub.audit import AuditAction
from usreview.hub.errors import AuditError
from usreview.hub.service import SITES_ONLY, ApiHandler, is_site
from usreview.store import Reviewer

if TYPE_CHECKING:
    from usreview.hub.api.app import ServiceContext

__all__ = [
    "CASE_LIBRARY",
    "RESEARCH",
    "REVIEW",
    "SITE_RESULTS",
    "SITE_UPLOAD",
    "TRAIN",
    "BaseHandler",
]

SITE_UPLOAD = "custom:usreview:upload"
SITE_RESULTS = "custom:usreview:results"
REVIEW = "custom:usreview:review"
TRAIN = "custom:usreview:train"
RESEARCH = "custom:usreview:research"
#: Each of these scopes reads the de-identified case library: reviewers open the cases
#: their studies' similar cases name; what they see of identified studies is more.
CASE_LIBRARY = (REVIEW, TRAIN, RESEARCH)
_DENIALS = (401, 403, 404)
_log = logging.getLogger("usreview.service")
_T = TypeVar("_T")

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class BaseHandler(ApiHandler):
    """An API handler with the service's context (archive, ingest, audit)."""

    #: What the handler's accesses are recorded as.
    audit_action = AuditAction.READ

    def initialize(self, hub_auth: Any = None, context: ServiceContext | None = None) -> None:
        """Keep ``context`` (required) besides the hub authentication."""
        super().initialize(hub_auth)
        assert context is not None, "API handlers need the service context"
        self.context = context
        self.audited = False
        self.resource = ""
        self.refusal_detail: dict[str, Any] = {}

    async def prepare(self) -> None:
        """Authenticate (401/403; 403 for all but sites on the sites' port); name the
        resource for the audit log."""
        self.resource = self.request.path.partition("/api/v1/")[2] or self.request.path
        self.context.refresh_hub_keys()  # a rotation of the hub's key is taken here
        await super().prepare()
        if self.settings.get(SITES_ONLY) and not is_site(self.caller):
            raise ApiError(
                403,
                "forbidden",
                "this port serves sites only: use the hub's address",
                reason="sites_only",
            )

    # -- who is calling ---------------------------------------------------------------

    @property
    def actor(self) -> str:
        """The caller's name for the audit log (``anonymous`` before authentication)."""
        model = getattr(self, "_hub_auth_user_cache", None)
        return str(model["name"]) if isinstance(model, dict) else "anonymous"

    def has_scope(self, scope: str) -> bool:
        """Whether the caller holds ``scope``."""
        return bool(self.hub_auth.check_scopes({scope}, self.caller))

    def site(self, scope: str, *, hide: tuple[str, object] | None = None) -> str:
        """The calling site's name, if it is a site holding ``scope``.

        Otherwise 403, or with ``hide=(kind, id)`` the 404 of a missing resource.
        """
        model = self.caller
        if is_site(model) and self.has_scope(scope):
            return str(model["name"])
        if hide is not None:
            raise ApiError(404, "not_found", f"no {hide[0]} {hide[1]}")
        raise ApiError(403, "forbidden", f"only sites with the scope {scope} may do this")

    async def reviewer(self, *, hide: tuple[str, object] | None = None) -> Reviewer:
        """The caller as a reviewer with their sites, if it holds the review scope.

        Otherwise 403, or with ``hide=(kind, id)`` the 404 of a missing resource.
        """
        if not self.has_scope(REVIEW):
            if hide is not None:
                raise ApiError(404, "not_found", f"no {hide[0]} {hide[1]}")
            raise ApiError(403, "forbidden", f"needs the scope {REVIEW}")
        name = str(self.caller["name"])
        known = self.context.reviewers
        reviewer = known.fresh(name)
        if reviewer is None:
            reviewer = await self.blocking(known.load, name, self.context.archive.review.reviewer)
        if reviewer.sites is not None:
            self.refusal_detail["restricted_to"] = sorted(reviewer.sites)
        return reviewer

    async def study_reviewer(self, study_instance_uid: str) -> Reviewer:
        """The caller as a reviewer of one study: the study's 404 without the scope or a UID."""
        reviewer = await self.reviewer(hide=("study", study_instance_uid))
        if not is_uid(study_instance_uid):
            raise ApiError(404, "not_found", f"no study {study_instance_uid}")
        return reviewer

    def case_reader(self, *, hide: tuple[str, object] | None = None) -> str:
        """The caller's name if it reads the case library (a reviewer, trainee or scientist).

        Otherwise 403, or with ``hide=(kind, id)`` the 404 of a missing resource.
        """
        if any(self.has_scope(scope) for scope in CASE_LIBRARY):
            return str(self.caller["name"])
        if hide is not None:
            raise ApiError(404, "not_found", f"no {hide[0]} {hide[1]}")
        raise ApiError(403, "forbidden", f"needs the scope {REVIEW}, {TRAIN} or {RESEARCH}")

    # -- work off the event loop --------------------------------------------------------

    async def blocking(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``func`` in the service's thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.context.executor, partial(func, *args, **kwargs))

    # -- audit -----------------------------------------------------------------------

    def audit_now(
        self,
        action: AuditAction,
        outcome: str = "allowed",
        detail: dict[str, Any] | None = None,
        resource: str | None = None,
    ) -> None:
        """Record this request's access; raises :class:`AuditError` (503) if it cannot."""
        self.context.audit.record(
            self.actor,
            action,
            resource if resource is not None else self.resource,
            outcome=outcome,
            detail=detail,
        )
        self.audited = True

    async def audit(
        self,
        action: AuditAction,
        outcome: str = "allowed",
        detail: dict[str, Any] | None = None,
        resource: str | None = None,
    ) -> None:
        """:meth:`audit_now` off the event loop (the log is fsynced)."""
        await self.blocking(self.audit_now, action, outcome, detail, resource)

    def answer_unchanged(self, etag: str) -> bool:
        """Set the answer's ``etag``; if the caller's ``If-None-Match`` names it, answer
        ``304 Not Modified`` and return ``True``.

        Such a re-read sends no data: it is counted
        (:class:`~usreview.hub.audit.RereadCounter`), not audited line by line, and the
        answer does not wait for the audit log's fsync. The caller's rights to what
        ``etag`` stands for must be checked before.
        """
        self.set_header("ETag", etag)
        known = self.request.headers.get("If-None-Match", "")
        if etag not in {tag.strip().removeprefix("W/") for tag in known.split(",")}:
            return False
        self.context.rereads.count(self.actor, self.resource)
        self.audited = True
        self.set_status(304)
        self.finish()
        return True

    # -- errors ----------------------------------------------------------------------

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """A traceback in the log only for the service's own failures."""
        problem = problem_for(value)
        if problem.status >= 500:
            super().log_exception(typ, value, tb)
        else:
            _log.info("%s %s: %s %s", self.request.method, self.resource, problem.status, value)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Answer ``{"status", "error", "message"[, "reason"]}``; audit the refusal."""
        exc_info: _ExcInfo | None = kwargs.get("exc_info")
        self.finish(self.error_body(exc_info[1] if exc_info else None, status_code))

    def error_body(self, exc: BaseException | None, status_code: int = 500) -> dict[str, Any]:
        """Set the status and content type of the answer to ``exc``, audit it, return its body."""
        problem = problem_for(exc, status_code)
        self.set_status(problem.status)
        if not self.audited:
            self._audit_refusal(problem.status, problem.error, problem.reason)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        return problem.to_json()

    def _audit_refusal(self, status: int, error: str, reason: str | None) -> None:
        action = AuditAction.DENIAL if status in _DENIALS else self.audit_action
        detail: dict[str, Any] = {"method": self.request.method, "status": status}
        if reason:
            detail["reason"] = reason
        if status in _DENIALS:
            detail.update(self.refusal_detail)
        if self.actor == "anonymous":
            detail["ip"] = self.request.remote_ip
        counted: int | None = 0
        if self.actor == "anonymous":  # a flood without a name: count, record later
            counted = self.context.refusals.admit(f"ip:{self.request.remote_ip}")
            if counted is None:
                return
        if counted:
            detail["suppressed"] = counted
        try:
            self.audit_now(action, outcome=error, detail=detail)
        except AuditError as exc:
            _log.error("cannot record a refusal in the audit log: %s", exc)
