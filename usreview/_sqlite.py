"""SQLite files that several processes open and write.

Switching a database to WAL needs an exclusive lock, and SQLite answers "database is
locked" at once, without waiting in the busy handler, when another connection is doing
the same (waiting could deadlock). So processes that start together on a new file (the
hub's service processes and its processing worker on a fresh state) would fail at
random. :func:`use_wal` retries until ``timeout``; once the file is in WAL (the mode is
stored in the file) the first query already finds it and nothing is retried.

Writers of one file take turns on its write lock. SQLite's own busy handler sleeps longer
and longer between tries (1, 2, 5, ... up to 100 ms), so a waiting writer misses most of
the moments the lock is free while a busy one takes it again at once: with the hub's
service processes and processing worker writing the index together, one write waited up
to a second. :func:`begin_immediate` tries every :data:`WRITE_RETRY_S` instead, so that a
writer gets the lock about a millisecond after it is released.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["BUSY_TIMEOUT_S", "WRITE_RETRY_S", "begin_immediate", "is_busy", "use_wal"]

#: How long a connection waits for another's lock before failing (seconds).
BUSY_TIMEOUT_S = 30.0
#: SQLITE_BUSY and SQLITE_LOCKED (the primary result codes).
_BUSY_CODES = (5, 6)
#: Seconds between two tries of a write transaction waiting for another writer.
WRITE_RETRY_S = 0.001


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
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.05)


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (SQLITE_BUSY or SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY_CODES


def begin_immediate(connection: sqlite3.Connection, timeout: float) -> None:
    """``BEGIN IMMEDIATE`` on ``connection``, retried every :data:`WRITE_RETRY_S` while busy.

    The connection's busy timeout is off while it retries and ``timeout`` (seconds)
    again afterwards, whatever happens.

    Raises
    ------
    sqlite3.OperationalError
        Any other failure, or the write lock still held by others after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    connection.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(WRITE_RETRY_S)
    finally:
        connection.execute(f"PRAGMA busy_timeout={round(timeout * 1000)}")
