"""Envelope format version 1: constants, the header, and frame headers.

Layout (all integers big-endian; full description in ``docs/envelope.md``)::

    header   magic "USRVENV\\0" | version u16 | suite u16 | chunk size u32
             | message id 16 | not before u64 | not after u64 | sender key id 32
             | recipient count u8 | count x (recipient key id 32 | HPKE wrap 80)
             | key commitment 32 | header signature 64
    frames   kind u8 | length u24 | body        (DATA, ..., FINAL, then SIGNATURE)

The header contains no patient data: ids, times, keys and wrapped keys only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from usreview.envelope.errors import (
    NotAnEnvelopeError,
    TamperedError,
    TruncatedError,
    UnsupportedVersionError,
)

__all__ = [
    "CHUNK_SIZE",
    "FORMAT_VERSION",
    "Header",
    "RecipientEntry",
    "read_header",
]

MAGIC = b"USRVENV\0"
FORMAT_VERSION = 1
#: HPKE X25519 / HKDF-SHA256 / AES-256-GCM; payload AES-256-GCM; Ed25519; SHA-256.
SUITE = 1
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
WRAP_SIZE = 80  # HPKE enc (32) + AES-256-GCM of a 32-byte key (48)
SIG_SIZE = 64
MAX_RECIPIENTS = 64

# Frame kinds. The kind of a data frame is also the last byte of its nonce.
DATA, FINAL, SIGNATURE = 0, 1, 2
FRAME_HEADER = struct.Struct(">I")  # kind << 24 | length
DATA_FRAME = CHUNK_SIZE + TAG_SIZE  # body length of every DATA frame

# Domain separation strings.
WRAP_INFO = b"usreview-envelope/v1 wrap\0"
PAYLOAD_INFO = b"usreview-envelope/v1 payload\0"
COMMIT_INFO = b"usreview-envelope/v1 commit\0"
HEADER_SIG_CONTEXT = b"usreview-envelope/v1 header\0"
FINAL_SIG_CONTEXT = b"usreview-envelope/v1 final\0"

_PREFIX = struct.Struct(">8sHHI16sQQ32sB")
_ENTRY = 32 + WRAP_SIZE


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class RecipientEntry:
    """One recipient: its key id and the message key wrapped for it with HPKE."""

    key_id: bytes
    wrapped_key: bytes


@dataclass(frozen=True)
class Header:
    """The envelope header; :meth:`signed_part` is what the header signature covers."""

    message_id: bytes
    not_before: int
    not_after: int
    sender_id: bytes
    recipients: tuple[RecipientEntry, ...]
    commitment: bytes
    signature: bytes = b""

    def signed_part(self) -> bytes:
        """Return the header bytes before the header signature."""
        prefix = _PREFIX.pack(
            MAGIC,
            FORMAT_VERSION,
            SUITE,
            CHUNK_SIZE,
            self.message_id,
            self.not_before,
            self.not_after,
            self.sender_id,
            len(self.recipients),
        )
        entries = b"".join(r.key_id + r.wrapped_key for r in self.recipients)
        return prefix + entries + self.commitment

    def to_bytes(self) -> bytes:
        """Return the complete encoded header (signature included)."""
        return self.signed_part() + self.signature


def read_header(src: _Readable) -> tuple[Header, bytes]:
    """Read and parse a header; return it and its exact bytes.

    Nothing is authenticated here: the caller verifies the header signature.
    """
    magic = _read(src, len(MAGIC))
    if magic != MAGIC:
        if len(magic) < len(MAGIC) and magic and MAGIC.startswith(magic):
            raise TruncatedError("envelope is truncated: it ends inside its header")
        raise NotAnEnvelopeError("not a usreview envelope (magic bytes missing)")
    version_bytes = _read_full(src, 2)
    version = int.from_bytes(version_bytes, "big")
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"envelope format version {version} is not supported "
            f"(this usreview reads version {FORMAT_VERSION})"
        )
    rest = _read_full(src, _PREFIX.size - len(MAGIC) - 2)
    prefix = magic + version_bytes + rest
    _, _, suite, chunk, message_id, not_before, not_after, sender, count = _PREFIX.unpack(prefix)
    if suite != SUITE:
        raise UnsupportedVersionError(f"envelope cipher suite {suite} is not supported")
    if chunk != CHUNK_SIZE or not 1 <= count <= MAX_RECIPIENTS:
        raise TamperedError("envelope header is malformed (altered after sealing)")
    body = _read_full(src, count * _ENTRY + 32 + SIG_SIZE)
    entries = tuple(
        RecipientEntry(body[i : i + 32], body[i + 32 : i + _ENTRY])
        for i in range(0, count * _ENTRY, _ENTRY)
    )
    commitment = body[count * _ENTRY : count * _ENTRY + 32]
    header = Header(
        message_id, not_before, not_after, sender, entries, commitment, body[-SIG_SIZE:]
    )
    return header, prefix + body


def _read(src: _Readable, size: int) -> bytes:
    parts = []
    while size:
        part = src.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _read_full(src: _Readable, size: int) -> bytes:
    data = _read(src, size)
    if len(data) < size:
        raise TruncatedError("envelope is truncated: it ends inside its header")
    return data
