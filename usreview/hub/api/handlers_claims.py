"""``POST /studies/{uid}/claim`` (claim or renew) and ``DELETE`` (release), for reviewers.

A claim lasts :attr:`~usreview.hub.api.settings.ServiceSettings.claim_minutes`; claiming a
processed study moves it to ``in_review``, and releasing sends it back to ``processed``
(a study still being processed keeps its status: see :mod:`usreview.store.review`).
Another reviewer's unexpired claim answers 409 ``claimed`` with the claim; an
administrator (``custom:usreview:admin``) may release anybody's. Sites and trainees get
the 404 of a missing study. Both are audited as writes.
"""

from __future__ import annotations

from usreview.hub.api.base import BaseHandler
from usreview.hub.api.views import claim_view
from usreview.hub.audit import AuditAction

__all__ = ["ADMIN", "ClaimHandler"]

ADMIN = "custom:usreview:admin"


class ClaimHandler(BaseHandler):
    """Claim, renew or release one study."""

    audit_action = AuditAction.WRITE

    async def post(self, study_instance_uid: str) -> None:
        """Claim the study (or renew one's own claim): 200 with the claim."""
        reviewer = await self.study_reviewer(study_instance_uid)
        seconds = self.context.settings.claim_minutes * 60
        review = self.context.archive.review
        claim = await self.blocking(review.claim, reviewer, study_instance_uid, seconds=seconds)
        self.context.worklist.invalidate()
        view = claim_view(claim)
        await self.audit(AuditAction.WRITE, "claimed", {"expires_at": view["expires_at"]})
        self.write_json(view)

    async def delete(self, study_instance_uid: str) -> None:
        """Release the study (holder or administrator): 204."""
        reviewer = await self.study_reviewer(study_instance_uid)
        review = self.context.archive.review
        force = self.has_scope(ADMIN)
        released = await self.blocking(review.release, reviewer, study_instance_uid, force=force)
        self.context.worklist.invalidate()
        detail = {"holder": released.reviewer if released else None, "admin": force}
        await self.audit(AuditAction.WRITE, "released", detail)
        self.set_status(204)
        self.finish()
