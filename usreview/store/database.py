"""Engines for the archive's index: SQLite (WAL, synchronous=FULL) or PostgreSQL (psycopg 3).

SQLite connections run with ``journal_mode=WAL``, ``synchronous=FULL`` (a commit survives
power loss), ``foreign_keys=ON`` and a busy timeout. pysqlite's own transaction handling
is switched off so that SQLAlchemy's transactions are real ones: reads start with
``BEGIN``, writes (on :func:`writer`) with ``BEGIN IMMEDIATE`` so that concurrent
writers wait for each other instead of failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url

__all__ = ["BUSY_TIMEOUT_S", "default_url", "make_engine", "writer"]

#: How long a SQLite connection waits for a lock before failing.
BUSY_TIMEOUT_S = 30.0
_WRITE = "usreview_sqlite_write"


def default_url(root: Path) -> str:
    """The SQLite index inside the archive root."""
    return f"sqlite:///{Path(root).resolve() / 'index.sqlite3'}"


def _normalise(url: str | URL) -> URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+pysqlite")
    if parsed.drivername not in ("sqlite+pysqlite", "postgresql+psycopg"):
        raise ValueError(
            f"unsupported database URL {parsed.drivername!r}: use sqlite:///PATH or "
            "postgresql://USER@HOST/DB (psycopg 3)"
        )
    if parsed.drivername.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
        raise ValueError("the SQLite index must be a file (sqlite:///PATH), not in memory")
    return parsed


def make_engine(url: str | URL) -> Engine:
    """Create the engine for ``url`` with the archive's durability settings."""
    parsed = _normalise(url)
    if parsed.drivername.startswith("sqlite"):
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


def writer(engine: Engine) -> Engine:
    """The same engine, starting SQLite transactions with ``BEGIN IMMEDIATE``."""
    return engine.execution_options(**{_WRITE: True})


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
