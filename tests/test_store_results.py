"""The results feed: per-site cursors, durable publishing, wake-ups (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store_support import Clock
from usreview.store import (
    Archive,
    CorruptObjectError,
    InvalidMetadataError,
    NotFoundError,
    ResultFeed,
    ResultRecord,
    StorageError,
)

STUDY = "1.2.826.0.2.1"
OTHER_STUDY = "1.2.826.0.2.2"


@pytest.fixture
def archive(db_url: str | None, tmp_path: Path) -> Iterator[Archive]:
    with Archive.open(db_url, tmp_path / "archive", clock=Clock()) as opened:
        yield opened


@pytest.fixture
def feed(archive: Archive) -> ResultFeed:
    return archive.results


def sealed(n: int) -> bytes:
    return f"sealed result {n} ".encode() + os.urandom(32)


def publish(feed: ResultFeed, n: int, *sites: str, **kw: object) -> ResultRecord:
    return feed.publish_result(
        sealed(n),
        sites=list(sites),
        study_instance_uid=str(kw.pop("study", STUDY)),
        kind=str(kw.pop("kind", "report")),
        **kw,  # type: ignore[arg-type]
    )


def test_each_site_sees_only_its_results_in_cursor_order(feed: ResultFeed) -> None:
    a1 = publish(feed, 1, "site-a")
    b1 = publish(feed, 2, "site-b")
    both = publish(feed, 3, "site-a", "site-b", label="Second opinion")
    a2 = publish(feed, 4, "site-a")
    cursors = [a1.cursor, b1.cursor, both.cursor, a2.cursor]
    assert cursors == sorted(cursors) and len(set(cursors)) == 4
    assert feed.results_since("site-a") == [a1, both, a2]
    assert feed.results_since("site-b") == [b1, both]
    assert feed.results_since("site-c") == []
    assert feed.results_since("site-a", a1.cursor) == [both, a2]
    assert feed.results_since("site-a", a1.cursor, limit=1) == [both]
    assert feed.results_since("site-a", a2.cursor) == []
    assert both.label == "Second opinion" and both.kind == "report"
    assert feed.read_result("site-b", both.cursor) == feed.read_result("site-a", both.cursor)
    with pytest.raises(NotFoundError):
        feed.read_result("site-b", a1.cursor)  # another site's: answers as missing
    with pytest.raises(NotFoundError):
        feed.get_result("site-a", 10**6)


def test_cursors_keep_growing_across_reopening(tmp_path: Path) -> None:
    with Archive.open(None, tmp_path / "a") as archive:
        first = publish(archive.results, 1, "site-a")
    with Archive.open(None, tmp_path / "a") as archive:
        second = publish(archive.results, 2, "site-a")
        assert second.cursor > first.cursor
        assert [r.cursor for r in archive.results.results_since("site-a")] == [
            first.cursor,
            second.cursor,
        ]


def test_concurrent_publishers_get_distinct_increasing_cursors(feed: ResultFeed) -> None:
    made: list[ResultRecord] = []

    def run(k: int) -> None:
        made.extend(publish(feed, 10 * k + i, "site-a") for i in range(5))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = feed.results_since("site-a", limit=100)
    assert sorted(made, key=lambda r: r.cursor) == listed
    assert len({r.cursor for r in listed}) == 20


def test_supersedes_is_recorded_and_checked(feed: ResultFeed) -> None:
    draft = publish(feed, 1, "site-a", kind="sr")
    final = publish(feed, 2, "site-a", kind="sr", supersedes=draft.cursor)
    assert final.supersedes == draft.cursor and draft.supersedes is None
    assert feed.results_since("site-a", draft.cursor)[0].supersedes == draft.cursor
    with pytest.raises(InvalidMetadataError, match="supersedes: no result"):
        publish(feed, 3, "site-a", supersedes=10**6)
    with pytest.raises(InvalidMetadataError, match="another study"):
        publish(feed, 3, "site-a", study=OTHER_STUDY, supersedes=draft.cursor)
    assert len(feed.results_since("site-a")) == 2
    old, new = feed.results_since("site-a")
    assert (old.superseded_by, new.superseded_by) == (final.cursor, None)
    assert feed.get_result("site-a", draft.cursor).superseded_by == final.cursor
    with pytest.raises(InvalidMetadataError, match=f"already superseded by result {final.cursor}"):
        publish(feed, 4, "site-a", kind="sr", supersedes=draft.cursor)
    third = publish(feed, 5, "site-a", kind="sr", supersedes=final.cursor)
    chain = feed.results_since("site-a")
    assert [(r.supersedes, r.superseded_by) for r in chain] == [
        (None, final.cursor),
        (draft.cursor, third.cursor),
        (final.cursor, None),
    ]


def test_keyed_results_list_one_chain_by_key_prefix(feed: ResultFeed) -> None:
    first = publish(feed, 1, "site-a", kind="sr", key="auto/1.2/sr/a")
    publish(feed, 2, "site-a", kind="sr", key="auto/1.20/sr/a")
    publish(feed, 3, "site-a", kind="sr")
    second = publish(feed, 4, "site-a", kind="sr", key="auto/1.2/sr/b", supersedes=first.cursor)
    found = feed.keyed_results("auto/1.2/")
    assert [(r.cursor, key) for r, key in found] == [
        (first.cursor, "auto/1.2/sr/a"),
        (second.cursor, "auto/1.2/sr/b"),
    ]
    assert found[0][0].superseded_by == second.cursor
    assert feed.keyed_results("auto/1.2_") == [] and feed.keyed_results("auto/1%") == []
    with pytest.raises(InvalidMetadataError, match="prefix"):
        feed.keyed_results("")


def test_an_archive_without_the_superseded_column_is_upgraded(tmp_path: Path) -> None:
    from sqlalchemy import text

    root = tmp_path / "archive"
    with Archive.open(None, root, clock=Clock()) as archive:
        draft = publish(archive.results, 1, "site-a")
        with archive._engine.begin() as connection:
            connection.execute(text('ALTER TABLE results DROP COLUMN "superseded_by"'))
    with Archive.open(None, root, clock=Clock()) as archive:
        assert archive.results.results_since("site-a")[0].superseded_by is None
        final = publish(archive.results, 2, "site-a", supersedes=draft.cursor)
        assert archive.results.get_result("site-a", draft.cursor).superseded_by == final.cursor


def test_arguments_are_validated(feed: ResultFeed) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"sites": []}, "at least one site"),
        ({"sites": ["../x"]}, "site must be"),
        ({"study_instance_uid": "not-a-uid"}, "study_instance_uid"),
        ({"kind": "Report!"}, "kind must be"),
        ({"label": 3}, "label"),
    ]
    for change, words in cases:
        args: dict[str, object] = {
            "sites": ["site-a"],
            "study_instance_uid": STUDY,
            "kind": "report",
            **change,
        }
        with pytest.raises(InvalidMetadataError, match=words):
            feed.publish_result(b"x", **args)  # type: ignore[arg-type]
    for cursor, limit in ((-1, 10), (0, 0), (0, 1001), (True, 10)):
        with pytest.raises(InvalidMetadataError):
            feed.results_since("site-a", cursor, limit)
    assert feed.results_since("site-a") == []


def test_publishing_is_durable_before_it_is_visible(
    feed: ResultFeed, archive: Archive, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    envelope = tmp_path / "result.env"
    envelope.write_bytes(sealed(1))
    record = feed.publish_result(envelope, sites="site-a", study_instance_uid=STUDY, kind="sr")
    assert len(synced) >= 2  # the object file, then its folder
    sha = hashlib.sha256(envelope.read_bytes()).hexdigest()
    assert record.envelope_sha256 == sha and record.envelope_size == envelope.stat().st_size
    assert record.object_key == f"objects/{sha[:2]}/{sha}"
    assert (archive.root / "results" / record.object_key).read_bytes() == envelope.read_bytes()

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(StorageError, match="nothing was acknowledged"):
        publish(feed, 2, "site-a")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert feed.results_since("site-a") == [record]
    assert list((archive.root / "results" / "tmp").iterdir()) == []


def test_recovery_keeps_results_and_holds_unpublished_objects(
    feed: ResultFeed, archive: Archive
) -> None:
    record = publish(feed, 1, "site-a")
    assert archive.recover().orphans == ()  # the archive's recovery leaves results alone
    orphan = feed._objects.write("objects", b"written, never committed")
    (feed._objects.tmp / "put-x.part").write_bytes(b"partial")
    report = feed.recover()
    assert (report.temp_files_removed, report.orphans) == (1, (orphan.key,))
    assert not feed._objects.exists(orphan.key)
    held = archive.root / "results" / "orphans" / orphan.key  # moved aside, not deleted
    assert held.read_bytes() == b"written, never committed"
    assert feed.read_result("site-a", record.cursor).startswith(b"sealed result 1")
    feed._objects.path(record.object_key).write_bytes(b"changed")
    with pytest.raises(CorruptObjectError):
        feed.read_result("site-a", record.cursor)


def test_recovery_over_an_older_index_holds_published_results_durably(tmp_path: Path) -> None:
    """An index restored older than the result objects: recovery moves the published
    results it no longer names to ``results/orphans/`` (folders 0700), never deletes them."""
    root = tmp_path / "archive"
    with Archive.open(None, root) as archive:
        published = [publish(archive.results, n, "site-a") for n in (1, 2)]
    # The same objects under an index from before they were published.
    with Archive.open(f"sqlite:///{tmp_path / 'older.sqlite3'}", root) as older:
        report = older.results.recover()
        assert sorted(report.orphans) == sorted(r.object_key for r in published)
        assert older.results.recover().orphans == ()  # held once
    for record in published:
        held = root / "results" / "orphans" / record.object_key
        assert hashlib.sha256(held.read_bytes()).hexdigest() == record.envelope_sha256
        assert not (root / "results" / record.object_key).exists()
        for folder in (held.parent, held.parent.parent, root / "results" / "orphans"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_waiting_thread_is_woken_by_a_publish(feed: ResultFeed) -> None:
    start = publish(feed, 1, "site-a").cursor
    got: list[list[ResultRecord]] = []
    waiter = threading.Thread(
        target=lambda: got.append(feed.wait_for_results("site-a", start, timeout=20, poll=20))
    )
    waiter.start()
    time.sleep(0.2)
    publish(feed, 2, "site-b")  # another site's: the waiter checks and keeps waiting
    time.sleep(0.2)
    assert waiter.is_alive()
    published = time.monotonic()
    mine = publish(feed, 3, "site-a")
    waiter.join(5)
    assert time.monotonic() - published < 2
    assert got == [[mine]]
    before = time.monotonic()
    assert feed.wait_for_results("site-a", mine.cursor, timeout=0.3) == []
    assert 0.25 < time.monotonic() - before < 2


def test_an_asyncio_waiter_and_observers_are_notified(feed: ResultFeed) -> None:
    seen: list[tuple[int, tuple[str, ...]]] = []

    def observer(record: ResultRecord, sites: tuple[str, ...]) -> None:
        seen.append((record.cursor, sites))

    def broken(record: ResultRecord, sites: tuple[str, ...]) -> None:
        raise RuntimeError("observer bug")

    unsubscribe = feed.subscribe(observer)
    feed.subscribe(broken)

    async def scenario() -> tuple[list[ResultRecord], float]:
        waiting = asyncio.create_task(feed.wait_for_results_async("site-b", 0, timeout=20, poll=20))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        started = time.monotonic()
        await asyncio.to_thread(publish, feed, 1, "site-a", "site-b")
        found = await asyncio.wait_for(waiting, 5)
        return found, time.monotonic() - started

    found, delay = asyncio.run(scenario())
    assert [r.kind for r in found] == ["report"]
    assert delay < 2
    assert seen == [(found[0].cursor, ("site-a", "site-b"))]
    unsubscribe()
    publish(feed, 2, "site-a")
    assert len(seen) == 1
