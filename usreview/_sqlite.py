"""SQLite files that several processes open: switching a new file to WAL safely.

Switching a database to WAL needs an exclusive lock, and SQLite answers "database is
locked" at once, without waiting in the busy handler, when another connection is doing
the same (waiting could deadlock). So processes that start together on a new file (the
hub's service processes and its processing worker on a fresh state) would fail at
random. :func:`use_wal` retries until ``timeout``; once the file is in WAL (the mode is
stored in the file) the first query already finds it and nothing is retried.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["use_wal"]

#: SQLITE_BUSY and SQLITE_LOCKED (the primary result codes).
_BUSY_CODES = (5, 6)


def use_wal(connection: sqlite3.Connection, timeout: float) -> None:
    """Put ``connection``'s database in WAL mode, retrying while others hold it.

    Raises
    ------
    sqlite3.OperationalError
        Any other failure, or the database still busy after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is None or code & 0xFF not in _BUSY_CODES or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.05)
