"""The primitives of cipher suite 1: key wrapping, key derivation, nonces.

- Wrap: HPKE base mode (RFC 9180) X25519 / HKDF-SHA256 / AES-256-GCM of the 32-byte
  message key, ``info = "usreview-envelope/v1 wrap\\0" || message id || sender id ||
  recipient id``.
- Derive: HKDF-SHA256 of the message key, salt = message id, gives the payload key
  (AES-256-GCM) and the key commitment (32 bytes, stored in the header).
- Nonce: 11-byte big-endian chunk counter || 1 byte frame kind (0 data, 1 final).
"""

from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from usreview.envelope.format import COMMIT_INFO, PAYLOAD_INFO, WRAP_INFO

__all__ = ["commitment_matches", "derive_keys", "nonce", "unwrap_key", "wrap_key"]

_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def _info(message_id: bytes, sender_id: bytes, recipient_id: bytes) -> bytes:
    return WRAP_INFO + message_id + sender_id + recipient_id


def wrap_key(
    key: bytes,
    recipient: x25519.X25519PublicKey,
    message_id: bytes,
    sender_id: bytes,
    recipient_id: bytes,
) -> bytes:
    """Return ``key`` sealed with HPKE to ``recipient`` (80 bytes)."""
    return _SUITE.encrypt(key, recipient, info=_info(message_id, sender_id, recipient_id))


def unwrap_key(
    wrapped: bytes,
    private: x25519.X25519PrivateKey,
    message_id: bytes,
    sender_id: bytes,
    recipient_id: bytes,
) -> bytes | None:
    """Return the key wrapped by :func:`wrap_key`, or None if it does not open."""
    try:
        return _SUITE.decrypt(wrapped, private, info=_info(message_id, sender_id, recipient_id))
    except (InvalidTag, ValueError):
        return None


def derive_keys(message_key: bytes, message_id: bytes) -> tuple[bytes, bytes]:
    """Return (payload key, key commitment) derived from the message key."""

    def hkdf(info: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=message_id, info=info).derive(message_key)

    return hkdf(PAYLOAD_INFO), hkdf(COMMIT_INFO)


def commitment_matches(expected: bytes, actual: bytes) -> bool:
    """Compare two key commitments in constant time."""
    return hmac.compare_digest(expected, actual)


def nonce(counter: int, kind: int) -> bytes:
    """Return the 12-byte AES-GCM nonce of chunk ``counter`` with frame ``kind``."""
    return counter.to_bytes(11, "big") + bytes((kind,))
