"""A durable record of opened messages, so that a replayed envelope is refused.

One small SQLite file (WAL, ``synchronous=FULL``) holds (sender key id, message id,
end of validity). A row is kept until its envelope has expired plus the allowed clock
skew; after that the envelope is refused as expired anyway, so the file stays bounded
by the number of messages in one validity window.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from usreview._group_commit import GroupCommit
from usreview._sqlite import BUSY_TIMEOUT_S, begin_immediate, use_wal
from usreview.envelope.errors import ReplayedError

__all__ = ["ReplayCache"]

#: Clock skew tolerated between sender and receiver, in seconds.
CLOCK_SKEW = 300
#: Expired rows are deleted at most this often (seconds), not on every record.
PURGE_INTERVAL = 60.0
#: Most records committed together.
MAX_BATCH = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    sender BLOB NOT NULL,
    message BLOB NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (sender, message)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_expires ON seen (expires)
"""


class ReplayCache:
    """Message ids already opened, stored in the SQLite file ``path``.

    Safe to share between threads: each thread keeps its own connection (opening one
    per call cost more than the query). This process's writers never sleep in SQLite's
    busy handler: records that arrive while one transaction commits wait and are then
    committed together, in one transaction and one fsync (group commit,
    :class:`~usreview._group_commit.GroupCommit`); another process's write lock is
    waited for with :func:`usreview._sqlite.begin_immediate`.
    Every record is still committed with ``synchronous=FULL`` before its :meth:`record`
    returns.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._group: GroupCommit[_Record, None] = GroupCommit(self._commit, max_batch=MAX_BATCH)
        self._purged_at = float("-inf")
        db = self._db()
        use_wal(db, BUSY_TIMEOUT_S)  # processes may create the file together
        db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    def check(self, sender_id: bytes, message_id: bytes) -> None:
        """Raise :class:`ReplayedError` if this message was already recorded."""
        row = (
            self._db()
            .execute("SELECT 1 FROM seen WHERE sender = ? AND message = ?", (sender_id, message_id))
            .fetchone()
        )
        if row is not None:
            raise _replayed(message_id)

    def record(
        self, sender_id: bytes, message_id: bytes, not_after: int, now: float | None = None
    ) -> None:
        """Record a message as opened (durably), forgetting expired ones.

        Expired rows are deleted at most every :data:`PURGE_INTERVAL` seconds (each
        delete looks through the whole window; a row kept a minute longer changes
        nothing: :meth:`check` of an expired envelope is never reached).

        Raises
        ------
        ReplayedError
            If it was already recorded (for example by a concurrent receiver).
        """
        self._group.submit(
            _Record(sender_id, message_id, not_after, time.time() if now is None else now)
        )

    def _commit(self, batch: Sequence[_Record]) -> list[BaseException | None]:
        """Insert ``batch`` in one transaction: each entry's outcome (None: recorded)."""
        now = min(entry.now for entry in batch)
        purge = abs(now - self._purged_at) >= PURGE_INTERVAL
        outcomes: list[BaseException | None] = []
        db = self._db()
        begin_immediate(db, BUSY_TIMEOUT_S)
        try:
            if purge:
                db.execute("DELETE FROM seen WHERE expires < ?", (int(now) - CLOCK_SKEW,))
            for entry in batch:
                try:
                    db.execute(
                        "INSERT INTO seen (sender, message, expires) VALUES (?, ?, ?)",
                        (entry.sender, entry.message, entry.not_after),
                    )
                    outcomes.append(None)
                except sqlite3.IntegrityError:  # only this statement is undone
                    outcomes.append(_replayed(entry.message))
            db.execute("COMMIT")
        except BaseException:  # nothing of the batch is recorded
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        if purge:
            self._purged_at = now
        return outcomes

    def __len__(self) -> int:
        (count,) = self._db().execute("SELECT count(*) FROM seen").fetchone()
        return int(count)


class _Record(NamedTuple):
    """One :meth:`ReplayCache.record` call."""

    sender: bytes
    message: bytes
    not_after: int
    now: float


def _replayed(message_id: bytes) -> ReplayedError:
    return ReplayedError(
        f"message {message_id.hex()} was already opened here (replayed envelope refused)"
    )
