"""Signed receipts: the hub's proof that it durably holds a site's instances.

They play the part of DICOM Storage Commitment: a site may delete its copy of an
instance only once it holds a receipt that verifies with the hub's public key.

A receipt is a JSON body in canonical form (keys sorted, no spaces, UTF-8; only
strings, integers, lists and objects) and an Ed25519 signature over
``b"usreview-receipt/v1\\0" + body``. On the wire::

    {"body": {...}, "signature": "<base64>"}

An *instance* receipt answers one upload (site, SOP Instance UID, plaintext SHA-256,
size, stored-at time, envelope message id, hub key id); a *batch* receipt lists every
instance the hub holds for a site (from :meth:`usreview.store.Archive.receipts`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature

from usreview.envelope import KeyRing, PrivateKeys, PublicKeys, RevokedKeyError
from usreview.envelope import UntrustedSenderError as _Untrusted
from usreview.ingest.errors import InvalidReceiptError
from usreview.store import InstanceRecord, Receipt

__all__ = [
    "RECEIPT_VERSION",
    "SignedReceipt",
    "sign_batch_receipt",
    "sign_instance_receipt",
    "verify_receipt",
]

RECEIPT_VERSION = 1
_CONTEXT = b"usreview-receipt/v1\0"
_TYPE = "usreview-receipt"


def canonical_json(body: Mapping[str, Any]) -> bytes:
    """The canonical bytes of ``body`` (sorted keys, no spaces, UTF-8)."""
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    """A receipt body and the hub's signature over its canonical form."""

    body: Mapping[str, Any]
    signature: bytes

    @property
    def kind(self) -> str:
        """``"instance"`` or ``"batch"``."""
        return str(self.body.get("kind", ""))

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a JSON-ready dict."""
        return {"body": dict(self.body), "signature": base64.b64encode(self.signature).decode()}

    def to_json(self) -> str:
        """The wire form as text."""
        return canonical_json(self.to_dict()).decode("utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedReceipt:
        """Parse the wire form (nothing is verified: call :func:`verify_receipt`).

        Raises
        ------
        InvalidReceiptError
            Not a receipt.
        """
        try:
            body = data["body"]
            signature = base64.b64decode(data["signature"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise InvalidReceiptError(f"not a usreview receipt ({exc})") from None
        if not isinstance(body, Mapping):
            raise InvalidReceiptError("not a usreview receipt (its body is not an object)")
        return cls(dict(body), signature)

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedReceipt:
        """Parse the wire form from text; see :meth:`from_dict`."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidReceiptError(f"not a usreview receipt (not JSON: {exc})") from None
        if not isinstance(data, Mapping):
            raise InvalidReceiptError("not a usreview receipt (not a JSON object)")
        return cls.from_dict(data)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _sign(hub: PrivateKeys, body: dict[str, Any]) -> SignedReceipt:
    body = {"type": _TYPE, "version": RECEIPT_VERSION, "hub_key_id": hub.key_id.hex(), **body}
    return SignedReceipt(body, hub.ed25519.sign(_CONTEXT + canonical_json(body)))


def sign_instance_receipt(
    hub: PrivateKeys,
    record: InstanceRecord,
    *,
    message_id: bytes,
    issued_at: datetime | None = None,
) -> SignedReceipt:
    """The hub's receipt for one stored instance, answering the envelope ``message_id``."""
    return _sign(
        hub,
        {
            "kind": "instance",
            "site": record.site,
            "sop_instance_uid": record.sop_instance_uid,
            "study_instance_uid": record.study_instance_uid,
            "plaintext_sha256": record.plaintext_sha256,
            "size": record.size,
            "stored_at": _iso(record.received_at),
            "message_id": message_id.hex(),
            "issued_at": _iso(issued_at or datetime.now(UTC)),
        },
    )


def sign_batch_receipt(
    hub: PrivateKeys,
    site: str,
    receipts: Iterable[Receipt],
    *,
    issued_at: datetime | None = None,
) -> SignedReceipt:
    """The hub's receipt listing the instances it durably holds for ``site``.

    ``receipts`` comes from :meth:`usreview.store.Archive.receipts` for that site.
    """
    instances = [
        {
            "sop_instance_uid": r.sop_instance_uid,
            "plaintext_sha256": r.plaintext_sha256,
            "size": r.size,
            "stored_at": _iso(r.received_at),
        }
        for r in receipts
    ]
    return _sign(
        hub,
        {
            "kind": "batch",
            "site": site,
            "count": len(instances),
            "instances": instances,
            "issued_at": _iso(issued_at or datetime.now(UTC)),
        },
    )


def verify_receipt(
    receipt: SignedReceipt | Mapping[str, Any] | str | bytes,
    hub_public_keys: PublicKeys | KeyRing | Iterable[PublicKeys],
    *,
    site: str | None = None,
) -> Mapping[str, Any]:
    """Check a receipt's signature with the hub's public key(s); return its body.

    Parameters
    ----------
    receipt
        A :class:`SignedReceipt` or its wire form (dict or JSON text).
    hub_public_keys
        The hub's public key, several (rotation), or a key ring (revoked keys refused).
    site
        If given, the receipt must be addressed to this site.

    Raises
    ------
    InvalidReceiptError
        Malformed, signed by an unknown or revoked key, altered, or for another site.
    """
    if isinstance(receipt, str | bytes):
        receipt = SignedReceipt.from_json(receipt)
    elif not isinstance(receipt, SignedReceipt):
        receipt = SignedReceipt.from_dict(receipt)
    body = receipt.body
    if body.get("type") != _TYPE or body.get("version") != RECEIPT_VERSION:
        raise InvalidReceiptError(f"not a usreview receipt, version {RECEIPT_VERSION}")
    key = _signer(body.get("hub_key_id"), hub_public_keys)
    try:
        key.ed25519.verify(receipt.signature, _CONTEXT + canonical_json(body))
    except (InvalidSignature, TypeError, ValueError):
        raise InvalidReceiptError(
            "receipt does not verify: it was altered or not signed by the hub"
        ) from None
    if site is not None and body.get("site") != site:
        raise InvalidReceiptError(f"receipt is for site {body.get('site')!r}, not {site!r}")
    return body


def _signer(key_id_hex: Any, keys: PublicKeys | KeyRing | Iterable[PublicKeys]) -> PublicKeys:
    try:
        key_id = bytes.fromhex(key_id_hex)
    except (TypeError, ValueError):
        raise InvalidReceiptError("receipt names no valid hub key id") from None
    if isinstance(keys, KeyRing):
        try:
            return keys.sender_for_opening(key_id)
        except (_Untrusted, RevokedKeyError) as exc:
            raise InvalidReceiptError(f"receipt signer refused: {exc}") from None
    candidates = [keys] if isinstance(keys, PublicKeys) else list(keys)
    for key in candidates:
        if key.key_id == key_id:
            return key
    raise InvalidReceiptError(
        f"receipt is signed by key {key_id.hex()[:16]}, which is not the hub's key"
    )
