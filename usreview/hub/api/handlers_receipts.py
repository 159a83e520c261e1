"""Receipts a site asks for again: ``GET /instances/{uid}/receipt`` and ``GET /receipts``.

Both are signed by the hub's key (:mod:`usreview.ingest.receipts`). A receipt fetched
later answers no particular upload, so its ``message_id`` is empty.
"""

from __future__ import annotations

from usreview.hub.api.base import SITE_RESULTS, SITE_UPLOAD, BaseHandler, check_uid
from usreview.hub.api.errors import ApiError, not_found
from usreview.hub.audit import AuditAction
from usreview.ingest import sign_instance_receipt

__all__ = ["BatchReceiptHandler", "ReceiptHandler"]


class _SiteHandler(BaseHandler):
    def calling_site(self, hide: tuple[str, object] | None = None) -> str:
        """The calling site (upload or results scope)."""
        try:
            return self.site(SITE_UPLOAD, hide=hide)
        except ApiError:
            return self.site(SITE_RESULTS, hide=hide)


class ReceiptHandler(_SiteHandler):
    """``GET /instances/{uid}/receipt``: a fresh receipt for one of the site's instances."""

    async def get(self, sop_instance_uid: str) -> None:
        """Sign a receipt for one stored instance."""
        hide = ("instance", sop_instance_uid)
        site = self.calling_site(hide)
        if not check_uid(sop_instance_uid):
            raise not_found(*hide)
        record = await self.blocking(self.context.archive.get, site, sop_instance_uid)
        receipt = sign_instance_receipt(self.context.ingestor.hub_keys, record, message_id=b"")
        await self.audit(AuditAction.READ, detail={"kind": "receipt"})
        self.write_json(receipt.to_dict())


class BatchReceiptHandler(_SiteHandler):
    """``GET /receipts``: a signed list of every instance the hub holds for the site."""

    async def get(self) -> None:
        """Sign a batch receipt."""
        site = self.calling_site()
        receipt = await self.blocking(self.context.ingestor.batch_receipt, site)
        await self.audit(AuditAction.READ, detail={"count": receipt.body.get("count")})
        self.write_json(receipt.to_dict())
