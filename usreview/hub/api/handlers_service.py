"""``GET /whoami`` and the 404 of every unknown path, audited like every other access.

``whoami`` is recorded as a ``read`` of ``whoami`` before the answer leaves; a path the
service does not serve answers ``{"status": 404, "error": "not_found", ...}`` after
authentication (so nothing about the caller's rights leaks) and is recorded as a
``denial`` by :meth:`BaseHandler.write_error`, the refusals of anonymous callers through
the service's refusal limiter.
"""

from __future__ import annotations

from usreview.hub.api.base import BaseHandler
from usreview.hub.api.errors import ApiError
from usreview.hub.audit import AuditAction
from usreview.hub.service import caller_summary

__all__ = ["UnknownPathHandler", "WhoamiHandler"]


class WhoamiHandler(BaseHandler):
    """``GET /whoami``: who the hub says the caller is."""

    async def get(self) -> None:
        """Audit the read, then return the caller's name, kind, groups and scopes."""
        await self.audit(AuditAction.READ)
        self.write_json(caller_summary(self.caller))


class UnknownPathHandler(BaseHandler):
    """Any path the service does not serve: the JSON 404, audited as a denial."""

    def get(self, *args: str) -> None:
        """Answer 404."""
        raise ApiError(404, "not_found", "no such endpoint")

    post = put = delete = patch = get
