"""A durable record of opened messages, so that a replayed envelope is refused.

One small SQLite file (WAL, ``synchronous=FULL``) holds (sender key id, message id,
end of validity). A row is kept until its envelope has expired plus the allowed clock
skew; after that the envelope is refused as expired anyway, so the file stays bounded
by the number of messages in one validity window.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from usreview.envelope.errors import ReplayedError

__all__ = ["ReplayCache"]

#: Clock skew tolerated between sender and receiver, in seconds.
CLOCK_SKEW = 300

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    sender BLOB NOT NULL,
    message BLOB NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (sender, message)
) WITHOUT ROWID
"""


class ReplayCache:
    """Message ids already opened, stored in the SQLite file ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    def check(self, sender_id: bytes, message_id: bytes) -> None:
        """Raise :class:`ReplayedError` if this message was already recorded."""
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM seen WHERE sender = ? AND message = ?", (sender_id, message_id)
            ).fetchone()
        if row is not None:
            raise _replayed(message_id)

    def record(
        self, sender_id: bytes, message_id: bytes, not_after: int, now: float | None = None
    ) -> None:
        """Record a message as opened (durably), forgetting expired ones.

        Raises
        ------
        ReplayedError
            If it was already recorded (for example by a concurrent receiver).
        """
        now = time.time() if now is None else now
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM seen WHERE expires < ?", (int(now) - CLOCK_SKEW,))
                db.execute(
                    "INSERT INTO seen (sender, message, expires) VALUES (?, ?, ?)",
                    (sender_id, message_id, not_after),
                )
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                raise _replayed(message_id) from None
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def __len__(self) -> int:
        with self._connect() as db:
            (count,) = db.execute("SELECT count(*) FROM seen").fetchone()
        return int(count)


def _replayed(message_id: bytes) -> ReplayedError:
    return ReplayedError(
        f"message {message_id.hex()} was already opened here (replayed envelope refused)"
    )
