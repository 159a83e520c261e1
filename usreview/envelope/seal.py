"""Sealing: encrypt a payload for several recipients and sign it as the sender."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from usreview.envelope.atomic import new_file, remove_leftovers
from usreview.envelope.crypto import derive_keys, wrap_key
from usreview.envelope.format import (
    FINAL_SIG_CONTEXT,
    HEADER_SIG_CONTEXT,
    MAX_RECIPIENTS,
    Header,
    RecipientEntry,
)
from usreview.envelope.keyring import KeyRing
from usreview.envelope.keys import PrivateKeys, PublicKeys
from usreview.envelope.stream import Sink, Source, encrypt_stream, signature_frame

__all__ = ["DEFAULT_VALIDITY", "MAX_VALIDITY", "EnvelopeInfo", "seal", "seal_file"]

#: Default validity window of a new envelope, in seconds (7 days).
DEFAULT_VALIDITY = 7 * 24 * 3600
#: Longest validity window accepted when sealing, in seconds (90 days).
MAX_VALIDITY = 90 * 24 * 3600


@dataclass(frozen=True)
class EnvelopeInfo:
    """What sealing or opening established about one envelope (no payload content)."""

    message_id: bytes
    sender_id: bytes
    recipient_ids: tuple[bytes, ...]
    not_before: int
    not_after: int

    @property
    def expires(self) -> str:
        """End of the validity window, as UTC text."""
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.not_after))


def seal(
    src: Source,
    dst: Sink,
    *,
    sender: PrivateKeys,
    recipients: Sequence[PublicKeys],
    keyring: KeyRing | None = None,
    valid_for: int = DEFAULT_VALIDITY,
    now: float | None = None,
) -> EnvelopeInfo:
    """Seal everything read from ``src`` into an envelope written to ``dst``.

    Streams in constant memory. ``dst`` receives a partial envelope if this fails; use
    :func:`seal_file` for an all-or-nothing output file.

    Parameters
    ----------
    src, dst
        Binary file objects (``src`` needs ``readinto``).
    sender
        The sender's private keys; its Ed25519 key signs the envelope.
    recipients
        1 to 64 distinct public keys; each can open the envelope.
    keyring
        If given, refuse a sender or recipient that it marks retired or revoked.
    valid_for
        Seconds from ``now`` until the envelope expires (1 to :data:`MAX_VALIDITY`).
    now
        Unix time of sealing (default: the clock).

    Raises
    ------
    ValueError
        Bad recipients or validity.
    RetiredKeyError, RevokedKeyError
        A key the key ring does not allow for sealing.
    """
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise ValueError(f"an envelope needs 1 to {MAX_RECIPIENTS} recipients")
    if len({r.key_id for r in recipients}) != len(recipients):
        raise ValueError("the same recipient is given twice")
    if not 1 <= valid_for <= MAX_VALIDITY:
        raise ValueError(f"valid_for must be 1 to {MAX_VALIDITY} seconds, not {valid_for}")
    if keyring is not None:
        keyring.check_for_sealing(sender.public, "sender")
        for recipient in recipients:
            keyring.check_for_sealing(recipient, "recipient")
    start = int(time.time() if now is None else now)
    message_id, message_key = os.urandom(16), os.urandom(32)
    entries = tuple(
        RecipientEntry(
            r.key_id, wrap_key(message_key, r.x25519, message_id, sender.key_id, r.key_id)
        )
        for r in recipients
    )
    payload_key, commitment = derive_keys(message_key, message_id)
    header = Header(message_id, start, start + valid_for, sender.key_id, entries, commitment)
    signature = sender.ed25519.sign(HEADER_SIG_CONTEXT + header.signed_part())
    header_bytes = dataclasses.replace(header, signature=signature).to_bytes()
    header_hash = hashlib.sha256(header_bytes).digest()
    dst.write(header_bytes)
    frames_hash = encrypt_stream(src, dst, payload_key, header_hash)
    dst.write(signature_frame(sender.ed25519.sign(FINAL_SIG_CONTEXT + header_hash + frames_hash)))
    return EnvelopeInfo(
        message_id, sender.key_id, tuple(e.key_id for e in entries), start, start + valid_for
    )


def seal_file(
    src: Path,
    dst: Path,
    *,
    sender: PrivateKeys,
    recipients: Sequence[PublicKeys],
    keyring: KeyRing | None = None,
    valid_for: int = DEFAULT_VALIDITY,
    now: float | None = None,
) -> EnvelopeInfo:
    """Seal the file ``src`` into the new file ``dst``, which appears only when complete.

    See :func:`seal`. Partial files of ``dst`` that a killed run left are removed first
    (:func:`~usreview.envelope.atomic.remove_leftovers`). Raises :class:`FileExistsError`
    if ``dst`` exists.
    """
    remove_leftovers(Path(dst))
    with open(src, "rb") as fin, new_file(Path(dst), mode=0o644) as fout:
        return seal(
            fin,
            fout,
            sender=sender,
            recipients=recipients,
            keyring=keyring,
            valid_for=valid_for,
            now=now,
        )
