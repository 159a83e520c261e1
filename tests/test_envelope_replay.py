"""The replay cache under concurrent receivers: group commit, duplicates, durability."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

import usreview.envelope.replay
from tests.store_support import in_processes_at_once
from usreview.envelope import ReplayCache, ReplayedError

NOW = 1_900_000_000
SENDER = b"s" * 32


def _record_all(cache: ReplayCache, messages: list[bytes]) -> list[Any]:
    """Record every message from its own thread at once; each outcome (None or error)."""
    outcomes: list[Any] = [None] * len(messages)
    start = threading.Barrier(len(messages))

    def run(i: int) -> None:
        start.wait()
        try:
            cache.record(SENDER, messages[i], not_after=NOW + 600, now=NOW)
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(messages))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_concurrent_records_share_commits_and_a_duplicate_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ReplayCache(tmp_path / "seen.sqlite3")
    cache.record(SENDER, b"old" * 4, not_after=NOW + 600, now=NOW)
    batches: list[int] = []
    commit = cache._group._commit

    def counted(batch: list[Any]) -> Any:
        batches.append(len(batch))
        return commit(batch)

    monkeypatch.setattr(cache._group, "_commit", counted)
    messages = [bytes([n]) * 16 for n in range(24)] + [b"old" * 4, bytes([5]) * 16]
    outcomes = _record_all(cache, messages)
    failed = [i for i, o in enumerate(outcomes) if o is not None]
    # The one recorded before, and one of the two records of message 5.
    assert len(failed) == 2 and 24 in failed and len({5, 25} & set(failed)) == 1
    assert all(isinstance(outcomes[i], ReplayedError) for i in failed)
    assert sum(batches) == len(messages) and len(batches) < len(messages)
    # Durable: another connection (as after a restart) sees all of them.
    assert len(ReplayCache(tmp_path / "seen.sqlite3")) == 25
    with pytest.raises(ReplayedError):
        ReplayCache(tmp_path / "seen.sqlite3").check(SENDER, bytes([7]) * 16)


def test_a_failed_commit_records_none_of_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ReplayCache(tmp_path / "seen.sqlite3")
    blocker = sqlite3.connect(tmp_path / "seen.sqlite3", timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    monkeypatch.setattr(usreview.envelope.replay, "BUSY_TIMEOUT_S", 0.05)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        cache.record(SENDER, b"m" * 16, not_after=NOW + 600, now=NOW)
    blocker.execute("ROLLBACK")
    blocker.close()
    monkeypatch.undo()
    assert len(cache) == 0
    cache.record(SENDER, b"m" * 16, not_after=NOW + 600, now=NOW)  # usable again
    assert len(cache) == 1


def _open_cache(path: Path) -> None:
    ReplayCache(path).record(SENDER, os.urandom(16), not_after=NOW + 600, now=NOW)


def test_processes_that_create_the_cache_together_all_succeed(tmp_path: Path) -> None:
    # The hub's service processes open it together on a fresh state: the switch to WAL
    # must wait its turn rather than fail with "database is locked".
    for attempt in range(12):
        path = tmp_path / f"replay-{attempt}.sqlite3"
        assert in_processes_at_once(_open_cache, 4, path) == [0, 0, 0, 0]
        assert len(ReplayCache(path)) == 4
