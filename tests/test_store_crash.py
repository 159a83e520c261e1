"""Crash safety: kill -9 a process that stores envelopes; nothing acknowledged is lost.

The child (this module run with ``python -m``) stores a stream of envelopes and prints
each acknowledged UID, flushed, after :meth:`Archive.put` returns. The test kills it at
random points, reopens the archive, recovers, and checks every acknowledged instance.
A second test does the same with several threads putting at once, so that puts share
group commits (the child reports how many puts went into how many commits).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from usreview.store import Archive, InstanceMetadata, Reviewer

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 40
SITE = "site-crash"
#: Threads putting at once in the group-commit child, and its kill -9 iterations.
THREADS, GROUP_ITERATIONS = 8, 20


def _meta(n: int) -> InstanceMetadata:
    return InstanceMetadata(
        sop_instance_uid=f"1.2.826.0.9.{n}",
        study_instance_uid=f"1.2.826.0.8.{n // 7}",
        series_instance_uid=f"1.2.826.0.7.{n // 7}.{n % 2}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
        kinds=["bmode"],
        plaintext_sha256=hashlib.sha256(f"plaintext {n}".encode()).hexdigest(),
        size=n,
    )


def _child(root: str, first: int) -> None:
    """Store envelopes ``first, first + 1, ...`` (and resend some) until killed."""
    archive = Archive.open(None, root)
    print("ready", flush=True)
    rng = random.Random(first)
    n = first
    while True:
        sends = [n, n - 2] if n % 3 == 0 and n - 2 >= 0 else [n]  # some resends: duplicates
        for k in sends:
            data = os.urandom(rng.randint(1, 96) * 1024)  # sealed afresh each time
            result = archive.put(SITE, data, _meta(k))
            print(f"ack {k} {result.record.envelope_sha256} {int(result.duplicate)}", flush=True)
        n += 1


@pytest.mark.slow
def test_kill_minus_9_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    rng = random.Random(20260301)
    acknowledged: dict[int, str] = {}  # n -> envelope sha256 acknowledged for it
    duplicates = 0
    orphans = temp_files = 0
    next_n = 0
    started = time.monotonic()
    for _ in range(ITERATIONS):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.test_store_crash", str(root), str(next_n)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        ready = child.stdout.readline()
        if ready != "ready\n":
            child.kill()
            _, err = child.communicate()
            pytest.fail(f"the child did not start: {ready!r} {err}")
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # cut by the kill: not an acknowledgement
            _, number, sha, dup = line.split()
            if int(number) in acknowledged:
                assert acknowledged[int(number)] == sha, f"{number} changed after its ack"
            acknowledged[int(number)] = sha
            duplicates += int(dup)
        next_n = max(acknowledged, default=-1) + 1  # the one in flight is sent again

        with Archive.open(None, root) as archive:
            report = archive.recover()
            assert report.missing == (), "a row lacks its object"
            orphans += len(report.orphans)
            temp_files += report.temp_files_removed
            records = archive.list_instances(Reviewer("admin"))
        counts = Counter(r.sop_instance_uid for r in records)
        assert max(counts.values(), default=1) == 1
        stored = {r.sop_instance_uid: r for r in records}
        for n, sha in acknowledged.items():
            record = stored.get(f"1.2.826.0.9.{n}")
            assert record is not None, f"acknowledged instance {n} was lost"
            assert record.envelope_sha256 == sha
            assert record.plaintext_sha256 == _meta(n).plaintext_sha256
        on_disk = {p.relative_to(root).as_posix() for p in (root / "objects").rglob("*")}
        on_disk = {k for k in on_disk if (root / k).is_file()}
        assert on_disk == {r.object_key for r in records}, "orphans left in objects/ by recovery"
        assert list((root / "tmp").iterdir()) == []

    with Archive.open(None, root) as archive:
        final = archive.fsck()
        assert final.clean, final
        assert final.checked >= len(acknowledged)
        for n in acknowledged:
            archive.read_envelope(SITE, f"1.2.826.0.9.{n}")  # bytes match their hash
    print(
        f"{len(acknowledged)} acknowledged, {duplicates} duplicate acks, "
        f"{orphans} orphans held and {temp_files} temp files removed by recovery"
    )
    assert len(acknowledged) > ITERATIONS  # the kills did not all land at start-up
    assert duplicates > 0
    assert time.monotonic() - started < 90


def _group_child(root: str, first: int) -> None:
    """``THREADS`` threads store envelopes ``first + k, first + k + THREADS, ...``."""
    archive = Archive.open(None, root)
    lock = threading.Lock()
    print("ready", flush=True)

    def run(k: int) -> None:
        rng = random.Random(first * 100 + k)
        n = first + k
        while True:
            data = os.urandom(rng.randint(1, 32) * 1024)
            result = archive.put(SITE, data, _meta(n))
            group = archive._group
            with lock:  # whole lines only, each after its own put returned
                print(
                    f"ack {n} {result.record.envelope_sha256} {group.batches} {group.items}",
                    flush=True,
                )
            n += THREADS

    for k in range(THREADS):
        threading.Thread(target=run, args=(k,), daemon=True).start()
    threading.Event().wait()


@pytest.mark.slow
def test_kill_minus_9_during_group_commits_loses_no_acknowledged_instance(
    tmp_path: Path,
) -> None:
    root = tmp_path / "archive"
    rng = random.Random(20261127)
    acknowledged: dict[int, str] = {}
    shared = 0  # iterations in which puts shared commits
    next_n = 0
    for _ in range(GROUP_ITERATIONS):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.test_store_crash", str(root), str(next_n), "group"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        ready = child.stdout.readline()
        if ready != "ready\n":
            child.kill()
            _, err = child.communicate()
            pytest.fail(f"the child did not start: {ready!r} {err}")
        time.sleep(rng.uniform(0.1, 0.6))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        batches = items = 0
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # cut by the kill: not an acknowledgement
            _, number, sha, batches_seen, items_seen = line.split()
            assert int(number) not in acknowledged, "each number is sent once"
            acknowledged[int(number)] = sha
            batches, items = max(batches, int(batches_seen)), max(items, int(items_seen))
        shared += items > batches
        next_n = max(acknowledged, default=-1) + 1  # past everything sent so far
        next_n += THREADS - next_n % THREADS  # unacknowledged numbers are never reused

        with Archive.open(None, root) as archive:
            report = archive.recover()
            assert report.missing == (), "a row lacks its object"
            records = archive.list_instances(Reviewer("admin"))
        stored = {r.sop_instance_uid: r for r in records}
        for n, sha in acknowledged.items():
            record = stored.get(f"1.2.826.0.9.{n}")
            assert record is not None, f"acknowledged instance {n} was lost"
            assert record.envelope_sha256 == sha
        assert list((root / "tmp").iterdir()) == []

    with Archive.open(None, root) as archive:
        final = archive.fsck()
        assert final.clean, final
    print(f"{len(acknowledged)} acknowledged; puts shared commits in {shared} runs")
    assert len(acknowledged) > GROUP_ITERATIONS
    assert shared > 0, "no group commit happened: the test proves nothing"


if __name__ == "__main__":
    if sys.argv[3:] == ["group"]:
        _group_child(sys.argv[1], int(sys.argv[2]))
    else:
        _child(sys.argv[1], int(sys.argv[2]))
