"""Sealed envelopes: peak memory on 1 GB, and seal+open speed against the crypto floor.

- One instance: CPU time to seal a 309 KB payload in memory and to open it into a file
  (what a site and the hub do for each upload of a single-frame instance), against the
  least work the design needs for it, measured in the same run: the payload's
  AES-256-GCM and SHA-256 (64 KiB chunks, reused buffers) plus the envelope's public-key
  steps (HPKE key wrap and two Ed25519 signatures to seal; key unwrap and two
  verifications to open). Best of 5 rounds of 200. Goal: at least 50 % of the floor.

- Memory: a child process seals 1 GB (generated on the fly) to a file, another opens it;
  each reports its peak RSS (``VmHWM``). Goal: under 100 MB each.
- Speed: seal and open a 256 MiB file (in ``/dev/shm`` when present, so that the disk
  does not set the pace) and compare with the least work the design needs, measured in
  the same run: AES-256-GCM ``encrypt_into``/``decrypt_into`` plus SHA-256 over the same
  bytes, 64 KiB chunks, reused buffers, one thread. Goal: at least 80 %. The envelope
  hashes in a second thread, so its CPU time is reported too.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from usreview.envelope import (
    CHUNK_SIZE,
    KeyRing,
    generate_keys,
    seal,
    seal_file,
    unseal,
    unseal_file,
)
from usreview.envelope.crypto import unwrap_key, wrap_key

SMALL_SIZE = 309_000
SMALL_ROUNDS, SMALL_EACH = 5, 200
SMALL_GOAL = 0.50
MEMORY_SIZE = 1 << 30
MEMORY_GOAL_MB = 100
SPEED_SIZE = 256 << 20
SPEED_GOAL = 0.80
REPEATS = 3
_BLOCK = 1 << 20


class _Generated:
    """A readable stream of ``size`` pseudo-random bytes held in one 1 MiB block."""

    def __init__(self, size: int) -> None:
        self._left = size
        self._block = memoryview(os.urandom(_BLOCK))
        self._at = 0

    def read(self, size: int = -1, /) -> bytes:
        buf = bytearray(min(self._left, _BLOCK) if size < 0 else size)
        return bytes(buf[: self.readinto(memoryview(buf))])

    def readinto(self, buffer: memoryview, /) -> int:
        n = min(len(buffer), self._left, _BLOCK - self._at)
        buffer[:n] = self._block[self._at : self._at + n]
        self._at = (self._at + n) % _BLOCK
        self._left -= n
        return n


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: ru_maxrss in KiB

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(mode: str, folder: str) -> None:
    """Run in a child process: seal or open 1 GB, print peak RSS in MB."""
    d = Path(folder)
    from usreview.envelope import load_private_keys, load_public_keys

    sender = load_private_keys(d / "a.key")
    recipient = load_private_keys(d / "b.key")
    if mode == "seal":
        with open(d / "env", "wb") as out:
            seal(_Generated(MEMORY_SIZE), out, sender=sender, recipients=[recipient.public])
    else:
        ring = KeyRing([load_public_keys(d / "a.pub")])
        unseal_file(d / "env", d / "out", recipient=recipient, keyring=ring)
    print(f"{_peak_rss_mb():.1f}")


def _memory(folder: Path) -> None:
    from usreview.envelope import write_key_pair

    write_key_pair(generate_keys("a"), folder)
    write_key_pair(generate_keys("b"), folder)
    code = "import sys; from benchmarks.bench_envelope import _child; _child(*sys.argv[1:])"
    root = str(Path(__file__).resolve().parent.parent)
    idle = subprocess.run(
        [
            sys.executable,
            "-c",
            "import usreview.envelope, benchmarks.bench_envelope as b;"
            "print(f'{b._peak_rss_mb():.1f}')",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
    ).stdout.strip()
    print(f"memory, 1 GiB payload (interpreter + imports alone: {idle} MB):")
    for mode in ("seal", "open"):
        t = time.perf_counter()
        peak = subprocess.run(
            [sys.executable, "-c", code, mode, str(folder)],
            check=True,
            capture_output=True,
            text=True,
            cwd=root,
        ).stdout.strip()
        dt = time.perf_counter() - t
        ok = "ok" if float(peak) < MEMORY_GOAL_MB else "OVER GOAL"
        print(f"  {mode:4}: peak RSS {peak} MB (goal < {MEMORY_GOAL_MB} MB: {ok}), {dt:.1f} s")
    size = (folder / "out").stat().st_size
    assert size == MEMORY_SIZE, size


def _baseline(data: memoryview) -> tuple[float, float]:
    """Seconds for encrypt_into + SHA-256, then decrypt_into + SHA-256, over ``data``."""
    aead = AESGCM(os.urandom(32))
    aad = os.urandom(32)
    ct = memoryview(bytearray(CHUNK_SIZE + 16))
    pt = memoryview(bytearray(CHUNK_SIZE))
    chunks = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    rounds = SPEED_SIZE // len(data)
    t0 = time.perf_counter()
    sha = hashlib.sha256()
    for r in range(rounds):
        for i, chunk in enumerate(chunks):
            aead.encrypt_into((r * 64 + i).to_bytes(12, "big"), chunk, aad, ct)
            sha.update(ct)
    t1 = time.perf_counter()
    sha = hashlib.sha256()
    nonce = (0).to_bytes(12, "big")
    aead.encrypt_into(nonce, chunks[0], aad, ct)
    for _ in range(rounds):
        for _ in chunks:
            sha.update(ct)
            aead.decrypt_into(nonce, ct, aad, pt)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def _speed(folder: Path) -> None:
    a, b = generate_keys("a"), generate_keys("b")
    ring = KeyRing([a.public])
    src = folder / "payload"
    with open(src, "wb") as f:
        gen = _Generated(SPEED_SIZE)
        while chunk := gen.read(_BLOCK):
            f.write(chunk)
    block = memoryview(os.urandom(_BLOCK))
    best = {"base_seal": 1e9, "base_open": 1e9, "seal": 1e9, "open": 1e9, "cpu": 1e9}
    ratios = []
    for _ in range(REPEATS):
        base_seal, base_open = _baseline(block)
        c0, t0 = time.process_time(), time.perf_counter()
        seal_file(src, folder / "env", sender=a, recipients=[b.public])
        t1 = time.perf_counter()
        unseal_file(folder / "env", folder / "out", recipient=b, keyring=ring)
        t2, c1 = time.perf_counter(), time.process_time()
        (folder / "env").unlink()
        (folder / "out").unlink()
        ratios.append((base_seal + base_open) / (t2 - t0))
        for k, v in (
            ("base_seal", base_seal),
            ("base_open", base_open),
            ("seal", t1 - t0),
            ("open", t2 - t1),
            ("cpu", c1 - c0),
        ):
            best[k] = min(best[k], v)
    gbs = {k: SPEED_SIZE / v / 1e9 for k, v in best.items()}
    base = best["base_seal"] + best["base_open"]
    env = best["seal"] + best["open"]
    where = "tmpfs" if str(folder).startswith("/dev/shm") else "disk"
    print(f"speed, {SPEED_SIZE >> 20} MiB payload on {where}, best of {REPEATS}:")
    print(
        f"  floor: encrypt_into+SHA-256 {gbs['base_seal']:.2f} GB/s, "
        f"decrypt_into+SHA-256 {gbs['base_open']:.2f} GB/s"
    )
    print(
        f"  envelope: seal {gbs['seal']:.2f} GB/s, open {gbs['open']:.2f} GB/s "
        f"(incl. file I/O, fsync, atomic rename)"
    )
    ratio = base / env
    ok = "ok" if ratio >= SPEED_GOAL else "BELOW GOAL"
    print(f"  seal+open wall-clock ratio to floor: {ratio:.0%} (goal >= {SPEED_GOAL:.0%}: {ok})")
    print(f"  each repeat (wall-clock): {', '.join(f'{r:.0%}' for r in ratios)}")
    print(f"  seal+open CPU-time ratio to floor (both threads): {base / best['cpu']:.0%}")


def _cpu_per_call(run: Callable[[int], object]) -> float:
    """Best CPU seconds per call of ``run(i)`` over :data:`SMALL_ROUNDS` rounds."""
    for i in range(20):  # warm up (a thread's buffers, caches)
        run(i)
    best = 1e9
    for _ in range(SMALL_ROUNDS):
        c0 = time.process_time()
        for i in range(SMALL_EACH):
            run(i)
        best = min(best, (time.process_time() - c0) / SMALL_EACH)
    return best


def _small(folder: Path) -> None:
    a, b = generate_keys("a"), generate_keys("b")
    ring = KeyRing([a.public])
    data = os.urandom(SMALL_SIZE)
    sealed = io.BytesIO()
    seal(io.BytesIO(data), sealed, sender=a, recipients=[b.public])
    envelope = sealed.getvalue()

    def seal_one(_: int) -> None:
        seal(io.BytesIO(data), io.BytesIO(), sender=a, recipients=[b.public])

    def open_one(i: int) -> None:
        out = folder / f"small-{i}"
        unseal(io.BytesIO(envelope), out, recipient=b, keyring=ring, durable=False)
        out.unlink()

    aead, aad = AESGCM(os.urandom(32)), os.urandom(32)
    chunks = [memoryview(data)[i : i + CHUNK_SIZE] for i in range(0, SMALL_SIZE, CHUNK_SIZE)]
    ct, pt = memoryview(bytearray(CHUNK_SIZE + 16)), memoryview(bytearray(CHUNK_SIZE))
    ids = (os.urandom(16), a.key_id, b.key_id)
    wrapped = wrap_key(os.urandom(32), b.public.x25519, *ids)
    signature = a.ed25519.sign(aad)

    def floor_seal(_: int) -> None:
        wrap_key(os.urandom(32), b.public.x25519, *ids)
        a.ed25519.sign(aad)
        sha = hashlib.sha256()
        for n, chunk in enumerate(chunks):
            aead.encrypt_into(n.to_bytes(12, "big"), chunk, aad, ct[: len(chunk) + 16])
            sha.update(ct[: len(chunk) + 16])
        a.ed25519.sign(sha.digest())

    nonce = (0).to_bytes(12, "big")
    frame = memoryview(bytearray(CHUNK_SIZE + 16))
    aead.encrypt_into(nonce, chunks[0], aad, frame)

    def floor_open(_: int) -> None:
        unwrap_key(wrapped, b.x25519, *ids)
        a.public.ed25519.verify(signature, aad)
        a.public.ed25519.verify(signature, aad)
        sha = hashlib.sha256()
        for _chunk in chunks:
            sha.update(frame)
            aead.decrypt_into(nonce, frame, aad, pt)

    cpu = {name: _cpu_per_call(run) * 1e3 for name, run in (
        ("seal", seal_one), ("open", open_one), ("floor_seal", floor_seal),
        ("floor_open", floor_open),
    )}  # fmt: skip
    print(f"one instance of {SMALL_SIZE // 1000} KB, CPU per envelope, best of {SMALL_ROUNDS}:")
    for step in ("seal", "open"):
        ratio = cpu[f"floor_{step}"] / cpu[step]
        ok = "ok" if ratio >= SMALL_GOAL else "BELOW GOAL"
        print(
            f"  {step}: {cpu[step]:.2f} ms, floor {cpu[f'floor_{step}']:.2f} ms: "
            f"ratio to floor {ratio:.0%} (goal >= {SMALL_GOAL:.0%}: {ok})"
        )


def main() -> None:
    shm = Path("/dev/shm")
    parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="usreview-bench-", dir=parent) as d:
        _small(Path(d))
    with tempfile.TemporaryDirectory(prefix="usreview-bench-", dir=parent) as d:
        _speed(Path(d))
    with tempfile.TemporaryDirectory(prefix="usreview-bench-", dir=parent) as d:
        _memory(Path(d))


if __name__ == "__main__":
    main()
