"""The spool's write-ahead journal: what put() acknowledged survives a crash and a power cut.

A power cut cannot be made here; its worst case for the gateway's spool can: a spool
file written through the journal is synced only later, so after a power cut it may be
missing or cut short. The tests kill the writing process (kill -9) before it synced any
spool file, then delete or truncate the spool files, and check that replaying the
journal brings back every acknowledged instance, byte for byte.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.site_helpers import power_cut
from usreview.site import Spool
from usreview.site.journal import MAGIC, Journal
from usreview.site.spool import JOURNAL, REJECTED

SEGMENT = 1 << 20  # small segments: several per test, and records of up to 256 KiB


def payload(thread: int, i: int, size: int = 20_000) -> bytes:
    """Distinct, reproducible bytes for instance ``i`` of ``thread``."""
    seed = hashlib.sha256(f"{thread}.{i}".encode()).digest()
    return (seed * (size // 32 + 1))[: size + (i % 7)]


# A writer that never syncs a spool file (sync_delay of an hour): every instance it
# acknowledges is durable only in the journal. It prints "THREAD I" after each put().
_WRITER = """
import sys, threading
from usreview.site import Spool
from tests.test_site_journal import payload
root, segment, threads, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spool = Spool(root)
spool.open_journal(segment_size=segment, sync_delay=3600)
lock = threading.Lock()
def write(t):
    for i in range(count):
        spool.put(f"1.2.{t}.{i}", payload(t, i))
        with lock:
            print(t, i, flush=True)
workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print("done", flush=True)
threading.Event().wait()
"""


def run_and_kill(root: Path, *, threads: int, count: int, after: int) -> set[tuple[int, int]]:
    """Run the writer, kill -9 it after ``after`` acknowledgements; return them all."""
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), str(16 * SEGMENT), str(threads), str(count)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    ) as proc:
        assert proc.stdout is not None
        acknowledged = set()
        while len(acknowledged) < after:
            line = proc.stdout.readline()
            assert line and line != "done\n", "the writer ended early"
            t, i = line.split()
            acknowledged.add((int(t), int(i)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Answered before the kill; a last line the kill cut short (no newline) is no
        # answer: the writer's print may reach the pipe in more than one write.
        for line in proc.stdout.read().split("\n")[:-1]:
            if line != "done":
                t, i = line.split()
                acknowledged.add((int(t), int(i)))
    return acknowledged


def assert_spooled(root: Path, acknowledged: set[tuple[int, int]]) -> None:
    for t, i in acknowledged:
        data = payload(t, i)
        path = root / f"1.2.{t}.{i}_{hashlib.sha256(data).hexdigest()}.dcm"
        assert path.read_bytes() == data, path.name


def snapshot(spool: Spool, target: Path) -> Path:
    """A copy of the spool's journal as a crash would leave it (page cache included)."""
    (target / JOURNAL).mkdir(parents=True)
    for path in (spool.root / JOURNAL).glob("*.wal"):
        shutil.copyfile(path, target / JOURNAL / path.name)
    return target


def segments(root: Path) -> list[Path]:
    return sorted((root / JOURNAL).glob("*.wal"))


# -- crash safety ----------------------------------------------------------------------


def test_acknowledged_instances_survive_kill_9_and_a_power_cut(tmp_path: Path) -> None:
    started = time.monotonic()
    acknowledged = run_and_kill(tmp_path / "spool", threads=1, count=2000, after=150)
    assert 150 <= len(acknowledged) < 2000
    damaged = power_cut(tmp_path / "spool")
    assert damaged >= 100
    spool = Spool(tmp_path / "spool")
    spool.remove_leftovers()
    recovery = spool.open_journal(segment_size=16 * SEGMENT)
    try:
        assert recovery.records >= len(acknowledged)
        assert recovery.restored >= damaged  # every damaged file written again
        assert_spooled(tmp_path / "spool", acknowledged)
        for item in spool.pending():  # nothing half-written under a final name
            assert hashlib.sha256(item.path.read_bytes()).hexdigest() == item.sha256
        assert len(segments(tmp_path / "spool")) == 1  # the replayed ones retired
    finally:
        spool.close_journal()
    assert segments(tmp_path / "spool") == []  # a clean stop retires the last one
    print(f"{len(acknowledged)} acknowledged, recovered in {time.monotonic() - started:.1f} s")


def test_concurrent_appends_are_all_recovered(tmp_path: Path) -> None:
    acknowledged = run_and_kill(tmp_path / "spool", threads=6, count=400, after=300)
    assert {t for t, _ in acknowledged} == set(range(6))
    damaged = power_cut(tmp_path / "spool", worst=True)  # no unsynced file survived
    assert damaged >= 200
    spool = Spool(tmp_path / "spool")
    recovery = spool.open_journal(segment_size=16 * SEGMENT)
    spool.close_journal()
    assert recovery.restored >= damaged  # (and records whose file was not written yet)
    assert_spooled(tmp_path / "spool", acknowledged)


# -- torn tails ------------------------------------------------------------------------


def _five(tmp_path: Path) -> tuple[Spool, list[bytes]]:
    spool = Spool(tmp_path / "live")
    spool.open_journal(segment_size=SEGMENT, sync_delay=3600)
    sent = [payload(0, i, 50_000) for i in range(5)]
    for i, data in enumerate(sent):
        spool.put(f"1.2.{i}", data)
    return spool, sent


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "header"])
def test_a_torn_tail_is_discarded_and_the_rest_recovered(tmp_path: Path, damage: str) -> None:
    live, sent = _five(tmp_path)
    try:
        crashed = snapshot(live, tmp_path / "crashed")
    finally:
        live.close_journal()
    (segment,) = segments(crashed)
    sizes = [58 + len(f"1.2.{i}") + len(sent[i]) for i in range(4)]
    last = sum(-(-size // 4096) * 4096 for size in sizes)  # the fifth record (page-aligned)
    assert segment.read_bytes()[last : last + 4] == MAGIC
    with segment.open("r+b") as f:
        if damage == "truncated":
            f.truncate(last + 1000)  # the file ends inside the last record
        elif damage == "corrupted":
            f.seek(last + 30_000)  # one byte of its data flipped (a write cut short)
            byte = f.read(1)
            f.seek(last + 30_000)
            f.write(bytes([byte[0] ^ 0xFF]))
        else:
            f.seek(last + 14)  # its header half written (the data length)
            f.write(b"\x55" * 8)
    spool = Spool(crashed)
    recovery = spool.open_journal(segment_size=SEGMENT)
    spool.close_journal()
    assert (recovery.records, recovery.restored, recovery.torn) == (4, 4, 1)
    assert sorted(item.sop_instance_uid for item in spool.pending()) == [
        f"1.2.{i}" for i in range(4)
    ]
    for i, data in enumerate(sent[:4]):
        assert (crashed / f"1.2.{i}_{hashlib.sha256(data).hexdigest()}.dcm").read_bytes() == data


def test_a_reused_segment_replays_only_its_new_records(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    generations: list[str] = []
    for k in range(4):  # each run reuses a file the previous runs wrote records into
        spool = Spool(root)
        assert spool.open_journal(segment_size=SEGMENT, sync_delay=3600).records == 0
        spool.put(f"1.2.{k}", payload(k, 0))
        crashed = snapshot(spool, tmp_path / f"crashed{k}")
        (active,) = segments(root)
        generations.append(active.name)
        spool.close_journal()
        replay = Spool(crashed)
        recovery = replay.open_journal(segment_size=SEGMENT)
        replay.close_journal()
        assert (recovery.records, recovery.torn) == (1, 0)
        assert [item.sop_instance_uid for item in replay.pending()] == [f"1.2.{k}"]
    assert generations == sorted(generations) and len(set(generations)) == 4
    names = sorted(p.name for p in (root / JOURNAL).iterdir())  # one in use, one ready
    assert len(names) == 2 and all(name.endswith(".free") for name in names), names


# -- group commit and the background thread ---------------------------------------------


def test_one_fdatasync_covers_the_appends_of_several_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usreview.site import journal as journal_module

    real_fdatasync, real_pwrite = os.fdatasync, journal_module._pwrite_all
    syncs: list[tuple[float, float]] = []  # (began, ended)
    written: dict[int, float] = {}  # thread -> when its last record was completely written

    def slow_fdatasync(fd: int) -> None:
        began = time.monotonic()
        time.sleep(0.005)  # a slow disk: the other threads append meanwhile
        real_fdatasync(fd)
        syncs.append((began, time.monotonic()))

    def pwrite(fd: int, parts: Sequence[bytes | memoryview], offset: int) -> None:
        real_pwrite(fd, parts, offset)
        written[threading.get_ident()] = time.monotonic()

    spool = Spool(tmp_path / "spool")
    spool.open_journal(segment_size=16 * SEGMENT)
    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    monkeypatch.setattr(journal_module, "_pwrite_all", pwrite)
    seen: list[str] = []
    spool.add_listener(lambda item: seen.append(item.sop_instance_uid))
    covered: list[bool] = []

    def write(t: int) -> None:
        for i in range(25):
            spool.put(f"1.2.{t}.{i}", payload(t, i))
            acknowledged, done = time.monotonic(), written[threading.get_ident()]
            # An fdatasync that began after the record was written ended before put().
            covered.append(any(done <= began and ended <= acknowledged for began, ended in syncs))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    journal = spool._journal
    assert journal is not None
    assert len(covered) == 200 and all(covered)
    assert journal.syncs < 100  # 200 records: far fewer fdatasyncs
    assert len(seen) == len(spool.pending()) == 200
    spool.close_journal()
    print(f"200 appends from 8 threads: {journal.syncs} fdatasyncs")


def test_synced_segments_are_retired(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root)
    spool.open_journal(segment_size=SEGMENT, sync_delay=0)
    try:
        for i in range(60):  # 20 KB each: about a segment and a quarter
            spool.put(f"1.2.{i}", payload(0, i))
        # Synced in the background, then the full segment and (idle) the active one go.
        deadline = time.monotonic() + 30
        while any(_records(path) for path in segments(root)):
            assert time.monotonic() < deadline, [p.name for p in segments(root)]
            time.sleep(0.1)
        assert len(list((root / JOURNAL).iterdir())) <= 3
    finally:
        spool.close_journal()
    again = Spool(root)
    assert again.open_journal(segment_size=SEGMENT).records == 0
    again.close_journal()
    assert len(again.pending()) == 60


def _records(path: Path) -> int:
    from usreview.site.journal import _read_segment

    generation = int(path.stem, 16)
    try:
        return sum(1 for record in _read_segment(path, generation) if record is not None)
    except FileNotFoundError:  # retired between the listing and the reading
        return 0


def test_an_fdatasync_error_falls_back_to_the_direct_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    spool = Spool(tmp_path / "spool")
    spool.open_journal(segment_size=SEGMENT)
    monkeypatch.setattr(os, "fdatasync", failing)
    fsynced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])
    with caplog.at_level(logging.ERROR):
        first = spool.put("1.2.1", b"abc")  # journal fails: written and fsynced directly
        second = spool.put("1.2.2", b"abd")  # the journal is off from now
    assert first.path.read_bytes() == b"abc" and second.path.read_bytes() == b"abd"
    assert len(fsynced) >= 4  # each file, each time the folder
    assert "writing directly" in caplog.text
    monkeypatch.undo()
    spool.close_journal()


def test_a_filling_journal_is_synced_without_delay(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root)
    spool.open_journal(segment_size=SEGMENT, sync_delay=3600)  # no hurry, unless filling
    try:
        for i in range(300):  # 20 KB each: about 6 segments
            spool.put(f"1.2.{i}", payload(0, i))
        deadline = time.monotonic() + 30
        while len(segments(root)) >= 4:  # from 4 segments, synced and retired at once
            assert time.monotonic() < deadline, [p.name for p in segments(root)]
            time.sleep(0.05)
        assert _records(segments(root)[-1]) > 0  # the one in use waits
    finally:
        spool.close_journal()
    assert len(spool.pending()) == 300


def test_large_instances_and_a_journal_behind_are_written_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    release = threading.Event()
    real = spool._make_durable

    def stuck(names: Sequence[str]) -> None:  # a spool that cannot keep up
        release.wait()
        real(names)

    monkeypatch.setattr(spool, "_make_durable", stuck)
    spool.open_journal(segment_size=1 << 16)  # 64 KiB: records of up to 16 KiB
    try:
        big = spool.put("1.2.0", bytes(100_000))
        for i in range(1, 150):  # 15 KB each: more than 8 segments not yet retired hold
            spool.put(f"1.2.{i}", payload(0, i, 15_000))
        assert big.path.read_bytes() == bytes(100_000)
        assert 1 < len(segments(tmp_path / "spool")) <= 8  # the rest went directly
        assert len(spool.pending()) == 150
    finally:
        release.set()
        spool.close_journal()
    assert segments(tmp_path / "spool") == []


def test_replay_leaves_rejected_and_intact_instances_alone(tmp_path: Path) -> None:
    live = Spool(tmp_path / "live")
    live.open_journal(segment_size=SEGMENT, sync_delay=3600)
    items = [live.put(f"1.2.{i}", payload(0, i)) for i in range(3)]
    crashed = snapshot(live, tmp_path / "crashed")
    live.close_journal()
    for item in items:
        shutil.copyfile(item.path, crashed / item.path.name)
    (crashed / REJECTED).mkdir()
    os.replace(crashed / items[0].path.name, crashed / REJECTED / items[0].path.name)
    spool = Spool(crashed)
    recovery = spool.open_journal(segment_size=SEGMENT)
    spool.close_journal()
    assert (recovery.records, recovery.restored) == (3, 0)
    assert [item.sop_instance_uid for item in spool.pending()] == ["1.2.1", "1.2.2"]


def test_the_journal_is_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open_journal(segment_size=SEGMENT)
    spool.put("1.2.3", b"abc")
    try:
        assert (tmp_path / "spool" / JOURNAL).stat().st_mode & 0o077 == 0
        for path in (tmp_path / "spool" / JOURNAL).iterdir():
            assert path.stat().st_mode & 0o077 == 0, path
    finally:
        spool.close_journal()


def test_segment_size_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_size"):
        Journal(tmp_path / "j", lambda names: None, segment_size=5000)


def test_the_record_is_synced_while_the_spool_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usreview.site import journal as journal_module

    real_fdatasync, real_pwrite = os.fdatasync, journal_module._pwrite_all
    began = threading.Event()
    syncs: list[tuple[float, float]] = []
    written: list[float] = []

    def fdatasync(fd: int) -> None:
        start = time.monotonic()
        began.set()
        real_fdatasync(fd)
        syncs.append((start, time.monotonic()))

    def pwrite(fd: int, parts: Sequence[bytes | memoryview], offset: int) -> None:
        real_pwrite(fd, parts, offset)
        written.append(time.monotonic())

    spool = Spool(tmp_path / "spool")
    spool.open_journal(segment_size=SEGMENT)
    journal = spool._journal
    assert journal is not None
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(journal_module, "_pwrite_all", pwrite)
    overlapped: list[bool] = []
    try:
        for i in range(5):
            began.clear()
            data = payload(0, i)
            # The spool file's write waits for an fdatasync to begin: without the sync
            # thread, none would begin until it returned.
            journal.append(
                f"1.2.{i}",
                hashlib.sha256(data).hexdigest(),
                data,
                meanwhile=lambda: overlapped.append(began.wait(10)),
            )
            acknowledged = time.monotonic()
            # Still durable first: an fdatasync that began after the record ended before.
            assert any(written[-1] <= b and e <= acknowledged for b, e in syncs)
    finally:
        monkeypatch.undo()
        spool.close_journal()
    assert overlapped == [True] * 5
