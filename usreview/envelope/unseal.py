"""Opening: check who sent an envelope, decrypt it to quarantine, release it if intact."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature

from usreview.envelope.atomic import new_file, remove_leftovers
from usreview.envelope.crypto import commitment_matches, derive_keys, unwrap_key
from usreview.envelope.errors import (
    ExpiredError,
    NotARecipientError,
    NotYetValidError,
    SignatureError,
    TamperedError,
)
from usreview.envelope.format import FINAL_SIG_CONTEXT, HEADER_SIG_CONTEXT, SIG_SIZE, read_header
from usreview.envelope.keyring import KeyRing
from usreview.envelope.keys import PrivateKeys, key_id_hex
from usreview.envelope.replay import CLOCK_SKEW, ReplayCache
from usreview.envelope.seal import EnvelopeInfo
from usreview.envelope.stream import Source, decrypt_stream

__all__ = ["unseal", "unseal_file"]

_QUARANTINE = ".quarantine"


def unseal(
    src: Source,
    out: Path | BinaryIO,
    *,
    recipient: PrivateKeys | Sequence[PrivateKeys],
    keyring: KeyRing,
    replay_cache: ReplayCache | None = None,
    now: float | None = None,
    durable: bool = True,
) -> EnvelopeInfo:
    """Open the envelope read from ``src`` into the new file ``out`` (or a file object).

    Checks in order: format and version, sender in ``keyring`` (active or retired, not
    revoked), header signature, validity window, replay, addressee, key commitment.
    The payload is then decrypted to a quarantine file next to ``out`` (mode 0600) that
    gets the name ``out`` only after the final chunk and the sender's signature over
    header and ciphertext verify and the message id is recorded in ``replay_cache``.
    On any failure no ``out`` file exists. ``durable=False`` skips the fsyncs of ``out``
    (see :func:`~usreview.envelope.atomic.new_file`): for a plaintext that is read and
    deleted at once.

    ``recipient`` may be several keys of one identity (its current key first, then the
    ones it replaced, see :mod:`usreview.envelope.transitions`): the one the envelope is
    addressed to opens it.

    ``out`` may instead be a binary file open for writing (the hub opens small uploads
    into memory, :func:`os.memfd_create`): the plaintext is written into it as it is
    decrypted and is verified only when this function returns; after an exception its
    content is unauthenticated and must be discarded.

    Raises
    ------
    EnvelopeError
        One subclass per cause: see :mod:`usreview.envelope.errors`.
    FileExistsError
        ``out`` exists.
    """
    clock = time.time() if now is None else now
    header, header_bytes = read_header(src)
    sender = keyring.sender_for_opening(header.sender_id)
    try:
        sender.ed25519.verify(header.signature, HEADER_SIG_CONTEXT + header_bytes[:-SIG_SIZE])
    except InvalidSignature:
        raise TamperedError(
            "envelope has been altered: its header does not match the sender's signature"
        ) from None
    if clock > header.not_after + CLOCK_SKEW:
        raise ExpiredError(
            f"envelope expired at {_utc(header.not_after)} (now {_utc(clock)}); "
            "ask the sender to seal it again"
        )
    if clock < header.not_before - CLOCK_SKEW:
        raise NotYetValidError(
            f"envelope is valid only from {_utc(header.not_before)} (now {_utc(clock)}); "
            "check the clocks of sender and receiver"
        )
    if replay_cache is not None:
        replay_cache.check(header.sender_id, header.message_id)
    keys = (recipient,) if isinstance(recipient, PrivateKeys) else tuple(recipient)
    entry, key = next(
        ((e, k) for k in keys for e in header.recipients if e.key_id == k.key_id),
        (None, keys[0]),
    )
    if entry is None:
        also = f" (nor to {len(keys) - 1} earlier key(s))" if len(keys) > 1 else ""
        raise NotARecipientError(
            f"envelope is not addressed to key {key_id_hex(key.key_id)} "
            f"({key.name}){also}; it has {len(header.recipients)} other recipient(s)"
        )
    message_key = unwrap_key(
        entry.wrapped_key, key.x25519, header.message_id, header.sender_id, entry.key_id
    )
    if message_key is None:
        raise TamperedError("envelope has been altered: the key wrapped for you does not open")
    payload_key, commitment = derive_keys(message_key, header.message_id)
    if not commitment_matches(commitment, header.commitment):
        raise TamperedError("envelope has been altered: its key commitment does not match")
    header_hash = hashlib.sha256(header_bytes).digest()

    def record() -> None:
        if replay_cache is not None:
            replay_cache.record(header.sender_id, header.message_id, header.not_after, clock)

    def decrypt(sink: BinaryIO) -> None:
        frames_hash, signature = decrypt_stream(src, sink, payload_key, header_hash)
        try:
            sender.ed25519.verify(signature, FINAL_SIG_CONTEXT + header_hash + frames_hash)
        except InvalidSignature:
            raise SignatureError(
                "envelope has been altered or forged: the sender's signature over its "
                "content does not verify"
            ) from None

    if isinstance(out, str | os.PathLike):
        with new_file(
            Path(out), suffix=_QUARANTINE, before_publish=record, durable=durable
        ) as quarantine:
            decrypt(quarantine)
    else:
        decrypt(out)
        record()
    return EnvelopeInfo(
        header.message_id,
        header.sender_id,
        tuple(e.key_id for e in header.recipients),
        header.not_before,
        header.not_after,
    )


def unseal_file(
    src: Path,
    out: Path,
    *,
    recipient: PrivateKeys | Sequence[PrivateKeys],
    keyring: KeyRing,
    replay_cache: ReplayCache | None = None,
    now: float | None = None,
    durable: bool = True,
) -> EnvelopeInfo:
    """Open the envelope file ``src`` into the new file ``out``; see :func:`unseal`.

    Quarantine files of ``out`` that a killed run left (partial, unverified plaintext)
    are removed first (:func:`~usreview.envelope.atomic.remove_leftovers`).
    """
    remove_leftovers(Path(out), _QUARANTINE)
    with open(src, "rb") as fin:
        return unseal(
            fin,
            out,
            recipient=recipient,
            keyring=keyring,
            replay_cache=replay_cache,
            now=now,
            durable=durable,
        )


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(timestamp))
