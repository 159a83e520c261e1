"""Crash safety: kill -9 a process that stores envelopes; nothing acknowledged is lost.

The child stores a stream of envelopes and prints each acknowledged UID, flushed, after
:meth:`Archive.put` returns. The test kills it at random points, reopens the archive,
recovers, and checks every acknowledged instance. Each child is forked by a *zygote* (this
module run with ``python -m``, once per test), which has imported the store already: a child
is then ready in milliseconds instead of the second an interpreter takes to start, and the
kill lands on a process that is storing, as often as the test asks.
A second test does the same with several threads putting at once, so that puts share
group commits (the child reports how many puts went into how many commits).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from usreview.store import Archive, InstanceMetadata, Reviewer

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 40
SITE = "site-crash"
#: Threads putting at once in the group-commit child, and its kill -9 iterations.
THREADS, GROUP_ITERATIONS = 8, 20


class Zygote:
    """The forking process: :meth:`run` starts a child, :meth:`kill` kills it with SIGKILL."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs = 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.test_store_crash"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._answer() == "ready"

    def _answer(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            pytest.fail(f"the zygote ended (status {self.process.wait()})")
        return line.strip()

    def _ask(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer()

    def run(self, kind: str, root: Path, first: int) -> Path:
        """Fork a ``kind`` child storing from ``first``; its output file once it is ready."""
        self.runs += 1
        out = self.folder / f"child-{self.runs}.out"
        answer = self._ask(f"{kind} {root} {first} {out}")
        if answer != "started":
            pytest.fail(f"the child did not start: {answer}")
        return out

    def kill(self) -> list[str]:
        """SIGKILL the child; the lines it completed (a line cut by the kill is not one)."""
        answer = self._ask("kill")
        assert answer == f"killed {signal.SIGKILL}", answer
        out = self.folder / f"child-{self.runs}.out"
        lines = out.read_text().splitlines(keepends=True)
        assert lines[0] == "ready\n"
        return [line for line in lines[1:] if line.endswith("\n")]

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    forking = Zygote(tmp_path)
    try:
        yield forking
    finally:
        forking.close()


def _zygote() -> None:
    """Read commands on stdin: ``KIND ROOT FIRST OUT`` forks a child, ``kill`` kills it."""
    print("ready", flush=True)
    child = 0
    for command in sys.stdin:
        if command.strip() == "kill":
            os.kill(child, signal.SIGKILL)
            _, status = os.waitpid(child, 0)
            print(f"killed {os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1}", flush=True)
            continue
        kind, root, first, out = command.split()
        child = os.fork()
        if child == 0:  # the child: its output to its own file, then store until killed
            try:
                sys.stdout = open(out, "w")  # noqa: SIM115 (for the rest of its life)
                (_group_child if kind == "group" else _child)(root, int(first))
            finally:
                os._exit(1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if Path(out).read_text().startswith("ready\n"):
                    break
            if os.waitpid(child, os.WNOHANG) != (0, 0):
                break
            time.sleep(0.002)
        else:
            os.kill(child, signal.SIGKILL)
        print("started" if Path(out).exists() else "no output", flush=True)


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
def test_kill_minus_9_loses_no_acknowledged_instance(tmp_path: Path, zygote: Zygote) -> None:
    root = tmp_path / "archive"
    rng = random.Random(20260301)
    acknowledged: dict[int, str] = {}  # n -> envelope sha256 acknowledged for it
    duplicates = 0
    orphans = temp_files = 0
    next_n = 0
    for _ in range(ITERATIONS):
        zygote.run("single", root, next_n)
        time.sleep(rng.uniform(0.0, 0.3))
        for line in zygote.kill():
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
    tmp_path: Path, zygote: Zygote
) -> None:
    root = tmp_path / "archive"
    rng = random.Random(20261127)
    acknowledged: dict[int, str] = {}
    shared = 0  # iterations in which puts shared commits
    next_n = 0
    for _ in range(GROUP_ITERATIONS):
        zygote.run("group", root, next_n)
        time.sleep(rng.uniform(0.1, 0.6))
        batches = items = 0
        for line in zygote.kill():
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
    _zygote()
