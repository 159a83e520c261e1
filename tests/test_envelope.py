"""Sealed envelopes: round trips, and every attack refused with its own error, no output."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import tempfile
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import usreview.envelope as envelope
from usreview.envelope import (
    CHUNK_SIZE,
    EnvelopeError,
    EnvelopeInfo,
    ExpiredError,
    KeyRing,
    KeyState,
    NotAnEnvelopeError,
    NotARecipientError,
    NotYetValidError,
    PrivateKeys,
    ReplayCache,
    ReplayedError,
    RetiredKeyError,
    RevokedKeyError,
    SignatureError,
    TamperedError,
    TrailingDataError,
    TruncatedError,
    UnsupportedVersionError,
    UntrustedSenderError,
    generate_keys,
    seal,
    seal_file,
    unseal,
    unseal_file,
)
from usreview.envelope.crypto import derive_keys, unwrap_key
from usreview.envelope.format import read_header
from usreview.envelope.stream import encrypt_stream, signature_frame
from usreview.errors import UsreviewError

NOW = 1_750_000_000
FRAME = 4 + CHUNK_SIZE + 16
SIG_FRAME = 4 + 64


@pytest.fixture(scope="module")
def alice() -> PrivateKeys:
    return generate_keys("site-a")


@pytest.fixture(scope="module")
def bob() -> PrivateKeys:
    return generate_keys("hub")


@pytest.fixture(scope="module")
def carol() -> PrivateKeys:
    return generate_keys("reviewer")


@pytest.fixture(scope="module")
def ring(alice: PrivateKeys) -> KeyRing:
    return KeyRing([alice.public])


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def make(data: bytes, sender: PrivateKeys, *recipients: PrivateKeys, **kw: object) -> bytes:
    out = io.BytesIO()
    kw.setdefault("now", NOW)
    seal(io.BytesIO(data), out, sender=sender, recipients=[r.public for r in recipients], **kw)  # type: ignore[arg-type]
    return out.getvalue()


def open_bytes(
    env: bytes, folder: Path, recipient: PrivateKeys, ring: KeyRing, **kw: object
) -> bytes:
    out = folder / "out.bin"
    kw.setdefault("now", NOW + 60)
    unseal(io.BytesIO(env), out, recipient=recipient, keyring=ring, **kw)  # type: ignore[arg-type]
    return out.read_bytes()


def _flipped_last(part: bytes) -> bytes:
    """``part`` with its last byte changed (always: a fixed replacement byte may be the one
    that was there, one envelope in 256)."""
    return part[:-1] + bytes([part[-1] ^ 0x01])


def refused(
    error: type[EnvelopeError],
    env: bytes,
    folder: Path,
    recipient: PrivateKeys,
    ring: KeyRing,
    **kw: object,
) -> EnvelopeError:
    """Assert that opening fails with exactly ``error`` and leaves nothing in ``folder``."""
    folder.mkdir(exist_ok=True)
    with pytest.raises(EnvelopeError) as info:
        open_bytes(env, folder, recipient, ring, **kw)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert list(folder.iterdir()) == []
    message = str(info.value)
    assert message and "\n" not in message
    return info.value


def header_size(env: bytes) -> int:
    return len(read_header(io.BytesIO(env))[1])


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        16 * CHUNK_SIZE - 1,
        16 * CHUNK_SIZE,
        16 * CHUNK_SIZE + 1,
        35 * CHUNK_SIZE + 7,
    ],
)
def test_round_trip_sizes(
    size: int, alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    data = payload(size, size)
    env = make(data, alice, bob)
    assert open_bytes(env, tmp_path, bob, ring) == data
    # Overhead: header + 20 bytes per chunk (+1 empty final chunk at exact multiples) + 68.
    chunks = size // CHUNK_SIZE + 1
    assert len(env) == header_size(env) + size + 20 * chunks + SIG_FRAME


def test_every_recipient_opens_and_header_has_no_payload(
    alice: PrivateKeys, bob: PrivateKeys, carol: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    data = b"PatientName=DOE^JANE " * 5000
    env = make(data, alice, bob, carol)
    for i, who in enumerate((bob, carol)):
        (tmp_path / str(i)).mkdir()
        assert open_bytes(env, tmp_path / str(i), who, ring) == data
    # No plaintext in the envelope (a 3-byte string would turn up in 105 KB of random
    # ciphertext about once in 160 runs; a whole field never does).
    assert b"PatientName=DOE^JANE" not in env
    assert len({make(data, alice, bob)[:300] for _ in range(3)}) == 3  # fresh ids and keys


def test_output_is_private_and_never_overwritten(
    alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    env = make(b"x", alice, bob)
    open_bytes(env, tmp_path, bob, ring)
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        open_bytes(env, tmp_path, bob, ring)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(0, 3 * CHUNK_SIZE + 3), seed=st.integers(0, 2**32), parts=st.integers(1, 3))
def test_round_trip_property(
    size: int,
    seed: int,
    parts: int,
    alice: PrivateKeys,
    bob: PrivateKeys,
    carol: PrivateKeys,
    ring: KeyRing,
) -> None:
    data = payload(size, seed)
    env = make(data, alice, *[bob, carol, generate_keys("x")][:parts])
    with tempfile.TemporaryDirectory() as d:
        assert open_bytes(env, Path(d), bob, ring) == data


class _Trickle(io.RawIOBase):
    """A pipe-like reader that returns at most 1000 bytes per call."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._src.read(min(len(buffer), 1000))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_short_reads(alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path) -> None:
    data = payload(2 * CHUNK_SIZE + 5)
    out = io.BytesIO()
    seal(_Trickle(data), out, sender=alice, recipients=[bob.public], now=NOW)
    unseal(_Trickle(out.getvalue()), tmp_path / "o", recipient=bob, keyring=ring, now=NOW)
    assert (tmp_path / "o").read_bytes() == data


def test_threads_at_once_each_get_their_own_payload(
    alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    """Each thread reuses its own batch buffers: streams in parallel never mix."""
    sizes = [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 7, 17 * CHUNK_SIZE + 3, 40 * CHUNK_SIZE + 1]

    def round_trip(n: int) -> bool:
        ok = True
        for k, size in enumerate(sizes):
            data = payload(size, seed=100 * n + k)
            env = make(data, alice, bob)
            out = tmp_path / f"{n}-{k}"
            unseal(io.BytesIO(env), out, recipient=bob, keyring=ring, now=NOW + 60)
            ok &= out.read_bytes() == data
        return ok

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(round_trip, range(12)))


def test_a_stream_inside_a_stream_gets_its_own_buffers(
    alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    """A sink that seals something else while it is written to (same thread)."""
    inner_data, outer_data = payload(2 * CHUNK_SIZE + 9, 1), payload(20 * CHUNK_SIZE + 5, 2)
    inner: list[bytes] = []

    class SealingSink(io.BytesIO):
        def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
            inner.append(make(inner_data, alice, bob))
            return super().write(data)

    outer = SealingSink()
    seal(io.BytesIO(outer_data), outer, sender=alice, recipients=[bob.public], now=NOW)
    assert open_bytes(outer.getvalue(), tmp_path, bob, ring) == outer_data
    assert len(inner) >= 2
    for n, env in enumerate(inner):
        (tmp_path / str(n)).mkdir()
        assert open_bytes(env, tmp_path / str(n), bob, ring) == inner_data


def test_a_thread_allocates_its_batch_buffers_once(
    alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    """Allocating 3 MiB per envelope cost more than opening a 300 KB one."""
    data = payload(300_000)
    env = make(data, alice, bob)  # this thread's buffers exist from here on
    tracemalloc.start()
    try:
        for n in range(5):
            again = make(data, alice, bob)
            out = tmp_path / f"o{n}"
            unseal(io.BytesIO(again), out, recipient=bob, keyring=ring, now=NOW + 60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert open_bytes(env, tmp_path, bob, ring) == data
    # the envelope and its copies are about 1.5 MB; one set of buffers alone is 3 MiB
    assert peak < 2 * 1024**2, f"peak {peak} bytes"


@pytest.mark.slow
def test_round_trip_large_file(
    alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    size = 256 * 1024 * 1024 + 12345
    block = bytearray(os.urandom(1 << 20))
    src = tmp_path / "study.bin"
    digest = hashlib.sha256()
    with open(src, "wb") as f:
        left, i = size, 0
        while left:
            block[:8] = i.to_bytes(8, "big")  # every MiB differs
            part = memoryview(block)[: min(left, len(block))]
            f.write(part)
            digest.update(part)
            left -= len(part)
            i += 1
    seal_file(src, tmp_path / "study.env", sender=alice, recipients=[bob.public])
    src.unlink()
    unseal_file(tmp_path / "study.env", tmp_path / "study.out", recipient=bob, keyring=ring)
    check = hashlib.sha256()
    with open(tmp_path / "study.out", "rb") as f:
        while chunk := f.read(1 << 20):
            check.update(chunk)
    assert check.digest() == digest.digest()


# --- attacks -------------------------------------------------------------------------


def expected_for_flip(env: bytes, position: int) -> type[EnvelopeError]:
    """The error a flipped bit at ``position`` must raise."""
    size = header_size(env)
    if position < 8:
        return NotAnEnvelopeError
    if position < 12:
        return UnsupportedVersionError
    if 48 <= position < 80:
        return UntrustedSenderError
    if position >= len(env) - 64:
        return SignatureError
    return TamperedError if position < size or position < len(env) - 64 else SignatureError


@pytest.fixture(scope="module")
def flip_envelope(alice: PrivateKeys, bob: PrivateKeys, carol: PrivateKeys) -> bytes:
    return make(payload(CHUNK_SIZE + 3000), alice, carol, bob)


def test_flipped_bit_in_header(
    flip_envelope: bytes, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    env = flip_envelope
    for position in range(header_size(env)):
        for bit in range(8):
            bad = bytearray(env)
            bad[position] ^= 1 << bit
            refused(expected_for_flip(env, position), bytes(bad), tmp_path, bob, ring)


def test_flipped_bit_in_frame_headers_and_signature(
    flip_envelope: bytes, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    env = flip_envelope
    start = header_size(env)
    frame_headers = [start, start + FRAME, len(env) - SIG_FRAME]
    positions = [p + i for p in frame_headers for i in range(4)] + list(
        range(len(env) - 64, len(env))
    )
    for position in positions:
        for bit in range(8):
            bad = bytearray(env)
            bad[position] ^= 1 << bit
            refused(expected_for_flip(env, position), bytes(bad), tmp_path, bob, ring)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_flipped_bit_anywhere(
    data: st.DataObject, flip_envelope: bytes, bob: PrivateKeys, ring: KeyRing
) -> None:
    env = flip_envelope
    position = data.draw(st.integers(0, len(env) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(env)
    bad[position] ^= 1 << bit
    with tempfile.TemporaryDirectory() as d:
        refused(expected_for_flip(env, position), bytes(bad), Path(d), bob, ring)


@pytest.fixture(scope="module")
def three_chunks(alice: PrivateKeys, bob: PrivateKeys) -> bytes:
    return make(payload(3 * CHUNK_SIZE + 100), alice, bob)


def frames(env: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Split an envelope into header, frames, signature frame."""
    start = header_size(env)
    body = env[start : len(env) - SIG_FRAME]
    parts = [body[i : i + FRAME] for i in range(0, len(body), FRAME)]
    return env[:start], parts, env[len(env) - SIG_FRAME :]


def test_frames_split_as_documented(three_chunks: bytes) -> None:
    _, parts, sig = frames(three_chunks)
    assert [p[0] for p in parts] == [0, 0, 0, 1]
    assert len(parts[-1]) == 4 + 100 + 16
    assert sig[:4] == bytes([2, 0, 0, 64])


def test_dropped_last_chunk(
    three_chunks: bytes, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    head, parts, sig = frames(three_chunks)
    err = refused(TruncatedError, head + b"".join(parts[:-1]) + sig, tmp_path, bob, ring)
    assert "final chunk is missing" in str(err)


def test_truncated_at_every_chunk_boundary(
    three_chunks: bytes, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    head, parts, sig = frames(three_chunks)
    cut = len(head)
    for part in [*parts, sig[:4]]:
        refused(TruncatedError, three_chunks[:cut], tmp_path, bob, ring)
        cut += len(part)
    for cut in (10, 100, len(head) - 1, len(head) + 2, len(head) + 5000, len(three_chunks) - 1):
        refused(TruncatedError, three_chunks[:cut], tmp_path, bob, ring)


def test_reordered_or_duplicated_chunks(
    three_chunks: bytes, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    head, p, sig = frames(three_chunks)
    for body in (
        [p[1], p[0], p[2], p[3]],
        [p[0], p[0], p[1], p[2], p[3]],
        [p[0], p[1], p[2], p[2], p[3]],
        [p[0], p[1], p[3], p[3]],
        [p[0], p[2], p[3]],
    ):
        err = refused(TamperedError, head + b"".join(body) + sig, tmp_path, bob, ring)
        assert "chunk" in str(err)


@pytest.mark.parametrize("extra", [b"\0", b"x" * 67, b"x" * 68, os.urandom(70000)])
def test_trailing_bytes(
    extra: bytes, three_chunks: bytes, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    refused(TrailingDataError, three_chunks + extra, tmp_path, bob, ring)


def test_wrong_recipient(
    alice: PrivateKeys, bob: PrivateKeys, carol: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    err = refused(NotARecipientError, make(b"data", alice, bob), tmp_path, carol, ring)
    assert "reviewer" in str(err)


def test_unknown_revoked_and_retired_sender(
    alice: PrivateKeys, bob: PrivateKeys, carol: PrivateKeys, tmp_path: Path
) -> None:
    env = make(b"data", alice, bob)
    refused(UntrustedSenderError, env, tmp_path, bob, KeyRing([carol.public]))
    revoked = KeyRing()
    revoked.add(alice.public, KeyState.REVOKED)
    refused(RevokedKeyError, env, tmp_path, bob, revoked)
    retired = KeyRing()
    retired.add(alice.public, KeyState.RETIRED)
    assert open_bytes(env, tmp_path, bob, retired) == b"data"


def test_sealing_honours_key_states(
    alice: PrivateKeys, bob: PrivateKeys, carol: PrivateKeys
) -> None:
    ring = KeyRing([bob.public])
    ring.add(carol.public, KeyState.RETIRED)
    with pytest.raises(RetiredKeyError):
        make(b"x", alice, bob, carol, keyring=ring)
    ring.set_state(carol.public.key_id, KeyState.REVOKED)
    with pytest.raises(RevokedKeyError):
        make(b"x", alice, carol, keyring=ring)
    ring.add(alice.public, KeyState.REVOKED)
    with pytest.raises(RevokedKeyError):
        make(b"x", alice, bob, keyring=ring)
    make(b"x", bob, alice, keyring=KeyRing([bob.public]))  # keys absent from the ring may seal


def test_co_recipient_cannot_forge_for_another(
    alice: PrivateKeys, bob: PrivateKeys, carol: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    """Carol, a co-recipient, knows the payload key; without Alice's key she cannot sign."""
    env = make(b"finding: normal study", alice, bob, carol)
    header, header_bytes = read_header(io.BytesIO(env))
    mine = next(e for e in header.recipients if e.key_id == carol.key_id)
    key = unwrap_key(
        mine.wrapped_key, carol.x25519, header.message_id, header.sender_id, carol.key_id
    )
    assert key is not None
    payload_key, _ = derive_keys(key, header.message_id)
    header_hash = hashlib.sha256(header_bytes).digest()
    forged_body = io.BytesIO()
    frames_hash = encrypt_stream(
        io.BytesIO(b"finding: malignant!!"), forged_body, payload_key, header_hash
    )
    for signature in (
        env[-64:],  # Alice's real signature, replayed over the forged content
        carol.ed25519.sign(b"usreview-envelope/v1 final\0" + header_hash + frames_hash),
    ):
        forged = header_bytes + forged_body.getvalue() + signature_frame(signature)
        refused(SignatureError, forged, tmp_path, bob, ring)
    assert open_bytes(env, tmp_path, bob, ring) == b"finding: normal study"


def test_key_commitment_is_checked(
    alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    """A (malicious) sender's header whose commitment does not match its key is refused."""
    env = make(b"x", alice, bob)
    header, header_bytes = read_header(io.BytesIO(env))
    bad = dataclasses.replace(header, commitment=bytes(32), signature=b"")
    signed = bad.signed_part()
    new_header = signed + alice.ed25519.sign(b"usreview-envelope/v1 header\0" + signed)
    err = refused(TamperedError, new_header + env[len(header_bytes) :], tmp_path, bob, ring)
    assert "commitment" in str(err)


def test_replayed_message(
    alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    cache = ReplayCache(tmp_path / "seen.sqlite")
    env = make(b"result", alice, bob)
    head, parts, sig = frames(env)
    # A tampered copy is refused without burning the message id ...
    refused(
        TamperedError,
        head + _flipped_last(parts[0]) + sig,
        tmp_path / "a",
        bob,
        ring,
        replay_cache=cache,
    )
    (tmp_path / "b").mkdir()
    assert open_bytes(env, tmp_path / "b", bob, ring, replay_cache=cache) == b"result"
    # ... the genuine one opens once, then is a replay, even across a new cache object.
    refused(
        ReplayedError,
        env,
        tmp_path / "c",
        bob,
        ring,
        replay_cache=ReplayCache(tmp_path / "seen.sqlite"),
    )
    assert len(cache) == 1


def test_opening_into_a_file_object_verifies_before_recording(
    alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    """The hub opens small uploads into a memory file: same checks, recorded only if intact."""
    cache = ReplayCache(tmp_path / "seen.sqlite")
    data = payload(3 * CHUNK_SIZE + 100, seed=5)
    env = make(data, alice, bob)
    head, parts, sig = frames(env)

    def into(envelope: bytes, sink: BinaryIO) -> EnvelopeInfo:
        return unseal(
            io.BytesIO(envelope),
            sink,
            recipient=bob,
            keyring=ring,
            replay_cache=cache,
            now=NOW + 60,
        )

    for bad, error in (
        (head + _flipped_last(parts[0]) + b"".join(parts[1:]) + sig, TamperedError),
        (head + b"".join(parts[:-1]) + sig, TruncatedError),
    ):
        with pytest.raises(error):
            into(bad, io.BytesIO())
    assert len(cache) == 0, "a refused envelope does not burn its message id"
    with open(os.memfd_create("plaintext"), "w+b") as memory:
        info = into(env, memory)
        memory.seek(0)
        assert memory.read() == data
    assert len(cache) == 1 and info.sender_id == alice.key_id
    with pytest.raises(ReplayedError):
        into(env, io.BytesIO())


def test_replay_cache_forgets_expired(
    alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    cache = ReplayCache(tmp_path / "seen.sqlite")
    cache.record(b"s" * 32, b"m" * 16, not_after=NOW, now=NOW)
    cache.record(b"s" * 32, b"n" * 16, not_after=NOW + 10**6, now=NOW + 3600)
    assert len(cache) == 1
    with pytest.raises(ReplayedError):
        cache.record(b"s" * 32, b"n" * 16, not_after=NOW + 10**6, now=NOW + 3600)


def test_expired_and_not_yet_valid(
    alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    env = make(b"x", alice, bob, valid_for=3600)
    refused(ExpiredError, env, tmp_path, bob, ring, now=NOW + 3600 + 301)
    refused(NotYetValidError, env, tmp_path, bob, ring, now=NOW - 301)
    assert open_bytes(env, tmp_path, bob, ring, now=NOW + 3600 + 299) == b"x"


@pytest.mark.parametrize("version", [0, 2, 0xFFFF])
def test_downgraded_or_unknown_version(
    version: int, alice: PrivateKeys, bob: PrivateKeys, ring: KeyRing, tmp_path: Path
) -> None:
    env = bytearray(make(b"x", alice, bob))
    env[8:10] = version.to_bytes(2, "big")
    err = refused(UnsupportedVersionError, bytes(env), tmp_path, bob, ring)
    assert f"version {version}" in str(err)


@pytest.mark.parametrize("data", [b"", b"USRV", b"%PDF-1.4 not an envelope at all", b"\0" * 1000])
def test_not_an_envelope(data: bytes, bob: PrivateKeys, ring: KeyRing, tmp_path: Path) -> None:
    expected = TruncatedError if data == b"USRV" else NotAnEnvelopeError
    refused(expected, data, tmp_path, bob, ring)


def test_seal_file_leaves_nothing_on_failure(
    alice: PrivateKeys, bob: PrivateKeys, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(b"x")
    ring = KeyRing()
    ring.add(bob.public, KeyState.REVOKED)
    with pytest.raises(RevokedKeyError):
        seal_file(
            tmp_path / "in", tmp_path / "out", sender=alice, recipients=[bob.public], keyring=ring
        )
    with pytest.raises(ValueError, match="twice"):
        seal_file(tmp_path / "in", tmp_path / "out", sender=alice, recipients=[bob.public] * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["in"]


def test_error_tree() -> None:
    for name in envelope.__all__:
        obj = getattr(envelope, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, EnvelopeError) and issubclass(obj, UsreviewError)
    assert issubclass(SignatureError, TamperedError) and issubclass(
        TrailingDataError, TamperedError
    )


def test_exported_members_are_sorted() -> None:
    assert envelope.__all__ == sorted(envelope.__all__, key=lambda n: (not n.isupper(), n))
    assert all(hasattr(envelope, n) for n in envelope.__all__)
