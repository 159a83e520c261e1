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

:class:`GroupCommit` lets threads that commit at the same time share one transaction and
so one fsync ("group commit"): one of them commits for all the others waiting, and each
returns only after that shared commit (how the batch's rows go in, and how one failing
item is kept from failing the others, is the caller's: see :mod:`usreview.store.archive`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import OperationalError

from usreview._sqlite import BUSY_TIMEOUT_S, begin_immediate, use_wal

__all__ = [
    "BUSY_TIMEOUT_S",
    "GroupCommit",
    "create_schema",
    "default_url",
    "make_engine",
    "writer",
]

_T = TypeVar("_T")
_R = TypeVar("_R")

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
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


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
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
        metadata.create_all(connection)


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


class _Slot(Generic[_T, _R]):
    __slots__ = ("done", "error", "item", "value")

    def __init__(self, item: _T) -> None:
        self.item = item
        self.done = False
        self.value: _R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[_T, _R]):
    """Run concurrent callers' items in shared batches, one batch at a time.

    A caller of :meth:`submit` waits while a batch is being committed; when none is, it
    becomes the leader: it takes its own item and up to ``max_batch - 1`` waiting ones
    (oldest first), calls ``commit(items)`` outside the lock, and hands every caller its
    own outcome. Nobody waits for a batch to fill: under load, what arrives while one
    batch commits forms the next. So this is also the process's lock for these commits
    (one at a time, no busy waiting between them).

    Parameters
    ----------
    commit
        Commits a batch; returns one outcome per item, in order: its result, or the
        exception that item's caller raises (the others are unaffected). If it raises
        instead, every caller in the batch raises that exception: nothing of the batch
        may then be taken as committed.
    max_batch
        Most items in one batch.
    """

    def __init__(
        self, commit: Callable[[Sequence[_T]], Sequence[_R | BaseException]], *, max_batch: int = 64
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._commit = commit
        self._max_batch = max_batch
        self._cond = threading.Condition(threading.Lock())
        self._waiting: deque[_Slot[_T, _R]] = deque()
        self._busy = False
        #: Batches committed and items in them so far (a mean batch size for tests).
        self.batches = 0
        self.items = 0

    @property
    def waiting(self) -> int:
        """Callers waiting for the batch being committed to finish."""
        with self._cond:
            return len(self._waiting)

    def submit(self, item: _T) -> _R:
        """Commit ``item`` (with whatever else is waiting); return its result.

        Raises
        ------
        BaseException
            The exception ``commit`` gave for this item, or raised for its batch.
        """
        slot: _Slot[_T, _R] = _Slot(item)
        with self._cond:
            self._waiting.append(slot)
            while self._busy and not slot.done:
                self._cond.wait()
            batch: list[_Slot[_T, _R]] = []
            if not slot.done:
                self._busy = True
                self._waiting.remove(slot)
                batch.append(slot)
                while self._waiting and len(batch) < self._max_batch:
                    batch.append(self._waiting.popleft())
        if batch:
            self._lead(batch)  # ours is in it
        if slot.error is not None:
            raise slot.error
        return slot.value  # type: ignore[return-value]  # set when no error

    def _lead(self, batch: list[_Slot[_T, _R]]) -> None:
        outcomes: Sequence[_R | BaseException] = []
        try:
            outcomes = self._commit([s.item for s in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(outcomes)} outcomes")
        except BaseException as exc:
            outcomes = [exc] * len(batch)
        finally:  # whatever happens, hand out the outcomes and let the next batch go
            if len(outcomes) != len(batch):
                interrupted = RuntimeError("the commit of this batch was interrupted")
                outcomes = [interrupted] * len(batch)
            with self._cond:
                for slot, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        slot.error = outcome
                    else:
                        slot.value = outcome
                    slot.done = True
                self.batches += 1
                self.items += len(batch)
                self._busy = False
                self._cond.notify_all()
