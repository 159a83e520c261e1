"""Group commit: puts that reach the commit together share one transaction and one fsync.

A batch's rows go in together; if one put's rows fail, the batch is redone with a
savepoint per put: that one rolls back alone and the others of its batch are stored; a
failed shared commit fails every put of the batch (nothing acknowledged). Batches are
forced by holding the first commit until the other puts wait behind it. The kill -9 test
of concurrent puts is in ``test_store_crash.py``.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

import usreview.store.archive as archive_module
from tests.store_support import Clock, envelope, meta
from usreview._group_commit import GroupCommit
from usreview.store import (
    Archive,
    ConflictError,
    InstanceMetadata,
    PutResult,
    Reviewer,
    StorageError,
)
from usreview.store.jobs_schema import JobStatus

PUTS = 8


@pytest.fixture
def archive(db_url: str | None, tmp_path: Path) -> Iterator[Archive]:
    with Archive.open(db_url, tmp_path / "archive", clock=Clock()) as opened:
        yield opened


def _hold_first_commit(archive: Archive, monkeypatch: pytest.MonkeyPatch, behind: int) -> None:
    """The first shared commit starts only once ``behind`` more puts wait for it."""
    group = archive._group
    original = group._commit
    held = threading.Event()

    def commit(items: Sequence[Any]) -> Sequence[Any]:
        if not held.is_set():
            held.set()
            deadline = time.monotonic() + 30
            while group.waiting < behind and time.monotonic() < deadline:
                time.sleep(0.002)
        return original(items)

    monkeypatch.setattr(group, "_commit", commit)


def _put_all(archive: Archive, puts: list[tuple[str, InstanceMetadata]]) -> list[Any]:
    """Run every put in its own thread at once; each one's result or exception."""
    outcomes: list[Any] = [None] * len(puts)
    start = threading.Barrier(len(puts))

    def run(i: int) -> None:
        site, metadata = puts[i]
        start.wait()
        try:
            outcomes[i] = archive.put(site, envelope(i), metadata)
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(puts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def _stored(archive: Archive) -> dict[str, str]:
    """UID -> site of every instance, read through a freshly opened archive."""
    url = archive._engine.url.render_as_string(hide_password=False)
    with Archive.open(url, archive.root) as reopened:
        return {r.sop_instance_uid: r.site for r in reopened.list_instances(Reviewer("t"))}


def test_concurrent_puts_share_a_commit_and_are_all_stored(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_first_commit(archive, monkeypatch, PUTS - 1)
    # Two studies, one of them with two series, so that rows are shared within a batch.
    puts = [("site-a", meta(n, study=n % 2, series=n % 3)) for n in range(PUTS)]
    insert = archive_module.insert_puts
    tried: list[int] = []

    def counted(conn: Any, batch: Sequence[Any], *args: Any) -> Any:
        tried.append(len(batch))
        return insert(conn, batch, *args)

    monkeypatch.setattr(archive_module, "insert_puts", counted)
    outcomes = _put_all(archive, puts)
    assert all(isinstance(o, PutResult) and not o.duplicate for o in outcomes), outcomes
    assert (archive._group.batches, archive._group.items) == (2, PUTS)
    assert tried == [1, PUTS - 1]  # each batch inserted at once, none put by put
    assert _stored(archive) == {m.sop_instance_uid: "site-a" for _, m in puts}
    assert archive.jobs.counts()[JobStatus.PENDING] == PUTS
    for study in (0, 1):
        record = archive.study("site-a", f"1.2.826.0.2.{study}")
        assert record.instances == PUTS // 2
    assert archive.recover().orphans == ()


def test_one_failing_put_does_not_fail_the_others_of_its_batch(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_first_commit(archive, monkeypatch, PUTS - 1)
    bad = meta(3, study=9).sop_instance_uid
    insert = archive_module.insert_puts
    tried: list[int] = []

    def insert_then_fail(conn: Any, puts: Sequence[Any], *args: Any) -> Any:
        tried.append(len(puts))
        outcomes = insert(conn, puts, *args)
        if any(m.sop_instance_uid == bad for _, m, _ in puts):  # rows in, then a failure
            conn.exec_driver_sql("SELECT * FROM no_such_table")
        return outcomes

    monkeypatch.setattr(archive_module, "insert_puts", insert_then_fail)
    # The bad put shares its study with a good one, and comes first or later in the batch.
    puts = [("site-a", meta(n, study=9 if n in (3, 5) else n)) for n in range(PUTS)]
    outcomes = _put_all(archive, puts)
    failed = [
        m.sop_instance_uid
        for (_, m), o in zip(puts, outcomes, strict=True)
        if not isinstance(o, PutResult)
    ]
    assert failed == [bad]
    assert isinstance(outcomes[3], StorageError) and "nothing was acknowledged" in str(outcomes[3])
    assert archive._group.batches == 2
    # A batch with the bad put failed as a whole, then was inserted one put at a time
    # (unless the bad one came first, alone).
    assert tried in ([1, PUTS - 1], [1, PUTS - 1, *[1] * (PUTS - 1)]), tried
    expected = {m.sop_instance_uid for _, m in puts} - {bad}
    assert set(_stored(archive)) == expected
    assert archive.jobs.counts()[JobStatus.PENDING] == PUTS - 1
    assert archive.study("site-a", "1.2.826.0.2.9").instances == 1
    report = archive.recover()  # the bad put's object was written, never acknowledged
    assert len(report.orphans) == 1 and report.missing == ()


def test_a_failed_shared_commit_fails_every_put_of_the_batch(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_first_commit(archive, monkeypatch, PUTS - 1)  # then one of 1, one of PUTS - 1
    sizes: list[int] = []
    held = archive._group._commit

    def commit(items: Sequence[Any]) -> Sequence[Any]:
        sizes.append(len(items))
        return held(items)

    monkeypatch.setattr(archive._group, "_commit", commit)

    def fail_big_batches(conn: Any) -> None:
        if sizes and sizes[-1] > 1:
            raise OSError(errno.EIO, "injected: the disk failed at commit")

    event.listen(archive._engine, "commit", fail_big_batches)
    try:
        outcomes = _put_all(archive, [("site-a", meta(n, study=n)) for n in range(PUTS)])
    finally:
        event.remove(archive._engine, "commit", fail_big_batches)
    stored = [o for o in outcomes if isinstance(o, PutResult)]
    failed = [o for o in outcomes if isinstance(o, StorageError)]
    assert (len(stored), len(failed), sizes) == (1, PUTS - 1, [1, PUTS - 1])
    assert all("nothing was acknowledged" in str(e) for e in failed)
    assert set(_stored(archive)) == {stored[0].record.sop_instance_uid}
    # The archive goes on; recovery removes the objects of the failed batch.
    assert not archive.put("site-a", envelope(99), meta(99)).duplicate
    assert len(archive.recover().orphans) == PUTS - 1


def test_a_uid_taken_within_the_batch_is_checked_again(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sites send the same new study in one batch: one stores, one conflicts."""
    _hold_first_commit(archive, monkeypatch, PUTS - 1)
    puts = [("site-a", meta(n, study=n)) for n in range(PUTS - 2)]
    puts += [("site-b", meta(20, study=7)), ("site-c", meta(21, study=7))]
    outcomes = _put_all(archive, puts)
    assert all(isinstance(o, PutResult) for o in outcomes[: PUTS - 2])
    winner, loser = sorted(outcomes[PUTS - 2 :], key=lambda o: isinstance(o, ConflictError))
    assert isinstance(winner, PutResult) and isinstance(loser, ConflictError)
    assert len(_stored(archive)) == PUTS - 1
    assert len(archive.list_conflicts()) == 1


# -- the helper itself ---------------------------------------------------------------------


def test_group_commit_hands_each_caller_its_own_outcome() -> None:
    batches: list[list[int]] = []
    gate = threading.Event()

    def commit(items: Sequence[int]) -> list[int | BaseException]:
        if not batches:
            gate.wait(10)
        batches.append(list(items))
        return [ValueError(n) if n % 3 == 0 else n * 10 for n in items]

    group: GroupCommit[int, int] = GroupCommit(commit, max_batch=4)
    results: dict[int, Any] = {}

    def run(n: int) -> None:
        try:
            results[n] = group.submit(n)
        except ValueError as exc:
            results[n] = exc

    first = threading.Thread(target=run, args=(1,))
    first.start()
    while group.waiting:  # the first caller leads a batch of its own
        time.sleep(0.001)
    others = [threading.Thread(target=run, args=(n,)) for n in range(2, 8)]
    for thread in others:
        thread.start()
    while group.waiting < 6:
        time.sleep(0.001)
    gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert batches[0] == [1] and sorted(n for b in batches[1:] for n in b) == list(range(2, 8))
    assert all(len(b) <= 4 for b in batches) and group.items == 7
    for n in range(1, 8):
        if n % 3 == 0:
            assert isinstance(results[n], ValueError) and results[n].args == (n,)
        else:
            assert results[n] == n * 10


def test_group_commit_hands_the_next_batch_to_the_oldest_waiting_caller() -> None:
    """Batches are formed in arrival order, each committed by its first caller."""
    batches: list[list[int]] = []
    leaders: list[str] = []
    gate = threading.Event()

    def commit(items: Sequence[int]) -> list[int | BaseException]:
        if not batches:
            gate.wait(10)
        batches.append(list(items))
        leaders.append(threading.current_thread().name)
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(commit, max_batch=4)
    threads = [threading.Thread(target=group.submit, args=(n,), name=str(n)) for n in range(1, 8)]
    for n, thread in enumerate(threads):
        thread.start()
        while group.waiting < n:  # the first commits at once, the others queue in order
            time.sleep(0.001)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert batches == [[1], [2, 3, 4, 5], [6, 7]]
    assert leaders == ["1", "2", "6"]  # each batch committed by its first caller
    assert (group.batches, group.items, group.waiting) == (3, 7, 0)


def test_group_commit_fails_the_whole_batch_when_the_commit_raises() -> None:
    def commit(items: Sequence[int]) -> list[int | BaseException]:
        raise OSError(errno.EIO, "commit failed")

    group: GroupCommit[int, int] = GroupCommit(commit)
    with pytest.raises(OSError, match="commit failed"):
        group.submit(1)
    assert (group.batches, group.waiting) == (1, 0)  # and it is usable again
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(commit, max_batch=0)
