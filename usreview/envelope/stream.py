"""The payload as a chunked AEAD stream (STREAM construction, as in age).

The plaintext is cut in chunks of :data:`CHUNK_SIZE` bytes; every chunk but the last is
full and the last is shorter (possibly empty). Each is encrypted with AES-256-GCM under
the payload key, nonce = chunk counter || frame kind, associated data = SHA-256 of the
header, and written as a frame ``kind u8 | length u24 | ciphertext``. SHA-256 runs over
all frame bytes for the sender's final signature.

Memory stays constant: two batches of :data:`BATCH` frames are reused throughout, and
each thread keeps its set of batch buffers (3 MiB) for its next stream: allocating and
zeroing them anew took more CPU than opening a 300 KB envelope. Hashing runs in one
worker thread (hashlib releases the GIL), overlapping encryption and I/O; a batch buffer
is reused only once its hash is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NoReturn, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from usreview.envelope.crypto import nonce
from usreview.envelope.errors import (
    TamperedError,
    TrailingDataError,
    TruncatedError,
)
from usreview.envelope.format import (
    CHUNK_SIZE,
    DATA,
    DATA_FRAME,
    FINAL,
    FRAME_HEADER,
    SIG_SIZE,
    SIGNATURE,
    TAG_SIZE,
)

__all__ = ["BATCH", "Sink", "Source", "decrypt_stream", "encrypt_stream", "signature_frame"]

#: Frames per I/O batch and per hashing job (1 MiB of plaintext).
BATCH = 16
_FRAME = FRAME_HEADER.size + DATA_FRAME
_SIG_FRAME_HEADER = FRAME_HEADER.pack(SIGNATURE << 24 | SIG_SIZE)


class Source(Protocol):
    """A binary file object to read from."""

    def read(self, size: int = ..., /) -> bytes: ...

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Sink(Protocol):
    """A binary file object to write to."""

    def write(self, data: bytes | memoryview, /) -> int | None: ...


class _Hasher:
    """SHA-256 fed in order by one worker thread, started only for multi-batch streams."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None] | None] = [None, None]

    def update(self, slot: int, data: memoryview, last: bool) -> None:
        if self._pool is None:
            if last:
                self._sha.update(data)
                return
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="usreview-hash")
        self._pending[slot] = self._pool.submit(self._sha.update, data)

    def wait(self, slot: int) -> None:
        future = self._pending[slot]
        if future is not None:
            future.result()
            self._pending[slot] = None

    def digest(self) -> bytes:
        self.wait(0)
        self.wait(1)
        return self._sha.digest()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class _Buffers(threading.local):
    """A thread's batch buffers: one of plaintext, two of frames (see the module doc)."""

    def __init__(self) -> None:
        self.busy = False
        self.plain, self.framed = _new_buffers()


def _new_buffers() -> tuple[memoryview, tuple[memoryview, memoryview]]:
    plain = memoryview(bytearray(BATCH * CHUNK_SIZE))
    return plain, (memoryview(bytearray(BATCH * _FRAME)), memoryview(bytearray(BATCH * _FRAME)))


_BUFFERS = _Buffers()


@contextlib.contextmanager
def _buffers() -> Iterator[tuple[memoryview, tuple[memoryview, memoryview]]]:
    """This thread's buffers, or new ones for a stream run inside another."""
    own = _BUFFERS
    if own.busy:
        yield _new_buffers()
        return
    own.busy = True
    try:
        yield own.plain, own.framed
    finally:
        own.busy = False


def _fill(src: Source, view: memoryview) -> int:
    """Read into ``view`` until it is full or the input ends; return the bytes read."""
    done, size = 0, len(view)
    while done < size:
        got = src.readinto(view[done:])
        if not got:
            break
        done += got
    return done


def encrypt_stream(src: Source, dst: Sink, key: bytes, aad: bytes) -> bytes:
    """Encrypt all of ``src`` as frames onto ``dst``; return SHA-256 of the frames."""
    aead = AESGCM(key)
    hasher = _Hasher()
    counter = slot = 0
    with _buffers() as (plain, outs), contextlib.closing(hasher):
        while True:
            size = _fill(src, plain)
            last = size < len(plain)
            hasher.wait(slot)
            out = outs[slot]
            pos = 0
            full = size // CHUNK_SIZE
            for i in range(full + last):
                kind = DATA if i < full else FINAL
                chunk = plain[i * CHUNK_SIZE : min(size, (i + 1) * CHUNK_SIZE)]
                length = len(chunk) + TAG_SIZE
                FRAME_HEADER.pack_into(out, pos, kind << 24 | length)
                pos += FRAME_HEADER.size
                aead.encrypt_into(nonce(counter, kind), chunk, aad, out[pos : pos + length])
                pos += length
                counter += 1
            hasher.update(slot, out[:pos], last)
            dst.write(out[:pos])
            slot ^= 1
            if last:
                return hasher.digest()


def signature_frame(signature: bytes) -> bytes:
    """Return the closing frame that carries the sender's final signature."""
    return _SIG_FRAME_HEADER + signature


def decrypt_stream(src: Source, dst: Sink, key: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """Decrypt frames from ``src`` onto ``dst``; return (SHA-256 of the frames, signature).

    The plaintext written is unauthenticated until the caller verifies the signature.
    Input is read a batch at a time: every frame but the final one has the same size, so
    frames never straddle two batches.

    Raises
    ------
    TruncatedError, TamperedError, TrailingDataError
    """
    aead = AESGCM(key)
    hasher = _Hasher()
    counter = slot = 0
    last = False
    with _buffers() as (plain, ins), contextlib.closing(hasher):
        while not last:
            hasher.wait(slot)
            buf = ins[slot]
            filled = _fill(src, buf)
            pos = out = 0
            for _ in range(BATCH):
                kind, length = _frame_header(buf[pos:filled], counter)
                end = pos + 4 + length
                if end > filled:
                    _raise_short_chunk(buf[pos + 4 : filled], counter)
                size = length - TAG_SIZE
                try:
                    aead.decrypt_into(
                        nonce(counter, kind), buf[pos + 4 : end], aad, plain[out : out + size]
                    )
                except InvalidTag:
                    raise TamperedError(
                        f"envelope has been altered: chunk {counter} fails authentication "
                        "(modified, reordered or duplicated)"
                    ) from None
                pos, out, counter = end, out + size, counter + 1
                if kind == FINAL:
                    last = True
                    break
            hasher.update(slot, buf[:pos], last)
            dst.write(plain[:out])
            if last:
                rest = bytes(buf[pos:filled])
            slot ^= 1
        digest = hasher.digest()
    want = len(_SIG_FRAME_HEADER) + SIG_SIZE
    trailer = rest + src.read(max(0, want + 1 - len(rest)))
    if len(trailer) < want:
        raise TruncatedError("envelope is truncated: the sender's signature is missing")
    if trailer[:4] != _SIG_FRAME_HEADER:
        raise TamperedError("envelope has been altered: malformed signature frame")
    if len(trailer) > want:
        raise TrailingDataError("envelope has been altered: unexpected bytes after its signature")
    return digest, trailer[4:want]


def _frame_header(view: memoryview, counter: int) -> tuple[int, int]:
    where = f"after chunk {counter - 1}" if counter else "before its first chunk"
    if len(view) < FRAME_HEADER.size:
        raise TruncatedError(
            f"envelope is truncated: it ends {where}, without its final chunk and signature"
        )
    (word,) = FRAME_HEADER.unpack(view[: FRAME_HEADER.size])
    kind, length = word >> 24, word & 0xFFFFFF
    if kind == SIGNATURE and length == SIG_SIZE:
        raise TruncatedError(f"envelope is truncated: its final chunk is missing ({where})")
    if (kind == DATA and length == DATA_FRAME) or (
        kind == FINAL and TAG_SIZE <= length < DATA_FRAME
    ):
        return kind, length
    raise TamperedError(f"envelope has been altered: malformed frame header at chunk {counter}")


def _raise_short_chunk(body: memoryview, counter: int) -> NoReturn:
    """Explain a chunk that the input ends inside of."""
    sig_at = len(body) - SIG_SIZE - len(_SIG_FRAME_HEADER)
    if sig_at >= 0 and body[sig_at : sig_at + len(_SIG_FRAME_HEADER)] == _SIG_FRAME_HEADER:
        # A complete signature frame follows: the length field was enlarged, not cut.
        raise TamperedError(f"envelope has been altered: the length of chunk {counter} changed")
    raise TruncatedError(f"envelope is truncated: it ends inside chunk {counter}")
