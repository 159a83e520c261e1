"""Engines for the archive's index: SQLite (WAL, synchronous=FULL) or PostgreSQL (psycopg 3).

SQLite connections run with ``journal_mode=WAL``, ``synchronous=FULL`` (a commit survives
power loss), ``foreign_keys=ON`` and a busy timeout. Processes that create a new index
together (the hub's services on a fresh state) wait their turn: the switch to WAL is
retried (:func:`usreview._sqlite.use_wal`) and :func:`create_schema` creates the tables in
one write transaction. pysqlite's own transaction handling is switched off so that
SQLAlchemy's transactions are real ones: reads start with ``BEGIN``, writes (on
:func:`writer`) with ``BEGIN IMMEDIATE`` so that concurrent writers wait for each other
instead of failing; a waiting writer tries again every millisecond
(:func:`usreview._sqlite.begin_immediate`, not SQLite's busy handler, whose sleeps grow to
100 ms), and gets the lock about a millisecond after it is freed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import OperationalError

from usreview._sqlite import BUSY_TIMEOUT_S, begin_immediate, use_wal

__all__ = [
    "BUSY_TIMEOUT_S",
    "create_schema",
    "default_url",
    "lock_schema",
    "make_engine",
    "writer",
]

_WRITE = "usreview_sqlite_write"
#: PostgreSQL advisory lock key held while the schema is created ("usreview" in ASCII).
_SCHEMA_LOCK = 0x7573726576696577


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
        engine = create_engine(
            parsed, connect_args={"timeout": BUSY_TIMEOUT_S}, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True, hide_parameters=True)


def writer(engine: Engine) -> Engine:
    """The same engine, starting SQLite transactions with ``BEGIN IMMEDIATE``."""
    return engine.execution_options(**{_WRITE: True})


def create_schema(engine: Engine, metadata: MetaData) -> None:
    """Create ``metadata``'s missing tables, one process at a time.

    Processes that open a new archive together (the service and the processing worker
    on a fresh state) would otherwise both find a table missing and both create it: the
    check and the creation run in one write transaction (SQLite's ``BEGIN IMMEDIATE``,
    PostgreSQL's transaction-scoped advisory lock).
    """
    with writer(engine).begin() as connection:
        lock_schema(connection)
        metadata.create_all(connection)


def lock_schema(connection: Connection) -> None:
    """Make this write transaction the only one changing the schema (PostgreSQL; a
    SQLite write transaction already is)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None
    use_wal(dbapi_connection, BUSY_TIMEOUT_S)  # processes may create the file together
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    if not conn.get_execution_options().get(_WRITE, False):
        conn.exec_driver_sql("BEGIN")
        return
    try:
        begin_immediate(conn.connection.dbapi_connection, BUSY_TIMEOUT_S)  # type: ignore[arg-type]
    except sqlite3.Error as exc:  # as SQLAlchemy wraps what a statement raises
        raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
