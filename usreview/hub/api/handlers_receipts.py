"""Receipts a site asks for again (``GET /instances/{uid}/receipt``, ``GET /receipts``),
and the keys that sign them (``GET /hub-keys``).

Both are signed by the hub's key (:mod:`usreview.ingest.receipts`). A receipt fetched
later answers no particular upload, so its ``message_id`` is empty. ``GET /receipts``
may name the UIDs asked about (``?uid=A&uid=B``, at most :data:`MAX_UIDS`): the batch
receipt, signed as the full one, then lists only those of them the hub holds.

``GET /hub-keys`` gives a site the hub's current public key and the signed transitions
from every earlier one (:mod:`usreview.hub.hubkeys`): a site that meets a receipt or a
result signed by a key it does not know follows them from the key it pinned. It also
announces the TLS certificate the hub serves next (``tls-next.crt``), signed.
"""

from __future__ import annotations

from usreview.dicom.header import is_uid
from usreview.hub.api.base import SITE_RESULTS, SITE_UPLOAD, BaseHandler
from usreview.hub.api.errors import ApiError, not_found
from usreview.hub.audit import AuditAction
from usreview.ingest import sign_instance_receipt

__all__ = ["MAX_UIDS", "BatchReceiptHandler", "HubKeysHandler", "ReceiptHandler"]

#: UIDs one ``GET /receipts`` may ask about: about 6.5 KB of query, under every
#: proxy's header limit (a site asks in batches).
MAX_UIDS = 100


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
        if not is_uid(sop_instance_uid):
            raise not_found(*hide)
        record = await self.blocking(self.context.archive.get, site, sop_instance_uid)
        receipt = sign_instance_receipt(self.context.ingestor.hub_keys, record, message_id=b"")
        await self.audit(AuditAction.READ, detail={"kind": "receipt"})
        self.write_json(receipt.to_dict())


class BatchReceiptHandler(_SiteHandler):
    """``GET /receipts[?uid=...]``: a signed list of the instances the hub holds for the site."""

    async def get(self) -> None:
        """Sign a batch receipt (of the UIDs asked about, if any)."""
        site = self.calling_site()
        uids = self._uids()
        receipt = await self.blocking(
            self.context.ingestor.batch_receipt, site, sop_instance_uids=uids
        )
        detail: dict[str, object] = {"count": receipt.body.get("count")}
        if uids is not None:
            detail["requested"] = len(uids)
        await self.audit(AuditAction.READ, detail=detail)
        self.write_json(receipt.to_dict())

    def _uids(self) -> list[str] | None:
        """The ``uid`` query arguments (None: none given, every instance)."""
        if "uid" not in self.request.query_arguments:
            return None
        uids = self.get_query_arguments("uid")
        if len(uids) > MAX_UIDS:
            raise ApiError(
                400,
                "bad_request",
                f"at most {MAX_UIDS} uid arguments per request (got {len(uids)}); ask in batches",
            )
        for uid in uids:
            if not is_uid(uid):
                raise ApiError(400, "bad_request", f"uid {uid[:80]!r} is not a DICOM UID")
        return list(dict.fromkeys(uids))


class HubKeysHandler(_SiteHandler):
    """``GET /hub-keys``: the hub's current public key and its signed transitions."""

    async def get(self) -> None:
        """Answer the keys (public: nothing of any site's)."""
        self.calling_site()
        keys = self.context.hub_keys
        try:  # read each time: 'hub next-certificate' works with the hub running
            announced: str | None = self.context.state.tls_next_cert.read_text()
        except FileNotFoundError:
            announced = None
        await self.audit(
            AuditAction.READ,
            detail={"kind": "hub_keys", "key_id": keys.current.key_id.hex()[:16],
                    "next_certificate": announced is not None},
        )  # fmt: skip
        self.write_json(keys.to_dict(announced))
