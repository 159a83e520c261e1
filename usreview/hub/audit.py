"""The append-only, hash-chained audit log: every access to patient data leaves a line.

Each line is one JSON object::

    {"seq": 7, "time": "2026-11-26T12:00:00.123456Z", "actor": "site-a", "action": "write",
     "resource": "instance/1.2.3", "outcome": "allowed", "detail": {...},
     "prev": "<hex of line 6's hash>", "hash": "<hex>"}

``hash`` is HMAC-SHA256 under the hub's audit key of ``prev`` and the canonical JSON of the
line without ``hash``; the first line's ``prev`` is 64 zeros. Changing, removing, reordering or
inserting a line breaks the chain from there on, and without the key nobody can forge a new
one. Lines are appended under an exclusive lock with ``O_APPEND`` and fsynced before
:meth:`AuditLog.record` returns. :func:`verify` walks the whole file.

Threads of one process that record at the same time share the work (group commit): while
one batch is written and fsynced, the lines that arrive wait and are then appended
together, with one lock, one write and one fsync; each :meth:`AuditLog.record` still
returns only once its own line is on disk. The last line's sequence number and hash are
remembered, and the file's tail is read again only when the file is not as this log left
it (another process appended, or it was replaced).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from usreview._group_commit import GroupCommit
from usreview.hub.errors import AuditError

__all__ = [
    "REREAD_QUIET",
    "AuditAction",
    "AuditError",
    "AuditLog",
    "RefusalLimiter",
    "RereadCounter",
    "UnchangedReads",
    "VerifyReport",
    "anchor_of",
    "last_lines",
    "verify",
]

GENESIS = "0" * 64
#: Most lines appended with one fsync.
MAX_BATCH = 256
#: Longest resource recorded as it is (longer ones are cut and digested: :func:`_bounded`).
MAX_RESOURCE = 512

_Event = tuple[str, str, str, str, dict[str, Any]]  # actor, action, resource, outcome, detail


class AuditAction(StrEnum):
    """What an audited access did."""

    READ = "read"
    WRITE = "write"
    EXPORT = "export"
    DENIAL = "denial"
    ADMIN = "admin"


def _digest(key: bytes, prev: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, prev.encode() + b"\n" + canonical.encode(), hashlib.sha256).hexdigest()


class AuditLog:
    """Append audited events to ``path`` (created with mode 0600).

    Parameters
    ----------
    path
        The log file.
    key
        Secret key of the chain (at least 32 bytes), kept in the hub's state directory.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) < 32:
            raise AuditError("the audit key must be at least 32 bytes")
        self.path = Path(path)
        self._key = key
        self._group: GroupCommit[_Event, dict[str, Any]] = GroupCommit(
            self._append, max_batch=MAX_BATCH
        )
        # (device, inode, size) of the file after our last append, and its last line's
        # (seq, hash): valid while the file is still exactly as we left it.
        self._left: tuple[int, int, int] | None = None
        self._last: tuple[int, str] = (0, GENESIS)

    def record(
        self,
        actor: str,
        action: AuditAction | str,
        resource: str,
        *,
        outcome: str = "allowed",
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one event and return it; it is on disk when this returns.

        Raises
        ------
        AuditError
            The log cannot be written (nothing of this event may be taken as recorded),
            or it ends with a damaged line.
        """
        event: _Event = (
            actor,
            str(AuditAction(action)),
            _bounded(resource),
            outcome,
            detail or {},
        )
        return self._group.submit(event)

    def _append(self, events: Sequence[_Event]) -> list[dict[str, Any] | BaseException]:
        """Append ``events`` under the file lock with one write and one fsync."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            found = os.fstat(fd)
            where = (found.st_dev, found.st_ino, found.st_size)
            seq, prev = self._last if where == self._left else _tail(self.path)
            self._left = None
            outcomes: list[dict[str, Any] | BaseException] = []
            chunks: list[bytes] = []
            for actor, action, resource, outcome, detail in events:
                body: dict[str, Any] = {
                    "seq": seq + 1,
                    "time": _iso(time.time()),
                    "actor": actor,
                    "action": action,
                    "resource": resource,
                    "outcome": outcome,
                    "detail": detail,
                    "prev": prev,
                }
                try:
                    line = dict(body, hash=_digest(self._key, prev, body))
                    text = json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n"
                except (TypeError, ValueError) as exc:  # this event's detail only
                    outcomes.append(exc)
                    continue
                seq, prev = seq + 1, line["hash"]
                outcomes.append(line)
                chunks.append(text.encode())
            data = memoryview(b"".join(chunks))
            try:
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError:
                # A full disk, say: what was written of this batch goes (none of it is
                # taken as recorded), so the log still ends with a complete line; a part
                # of one left there would refuse every later append, even with space again.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, found.st_size)
                    os.fsync(fd)
                raise
            self._left = (found.st_dev, found.st_ino, found.st_size + sum(map(len, chunks)))
            self._last = (seq, prev)
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)  # also releases the lock
        return outcomes


def _bounded(resource: str) -> str:
    """``resource``, or its start and a digest of the whole when it is longer than
    :data:`MAX_RESOURCE` (a caller's request path is recorded as it was sent)."""
    if len(resource) <= MAX_RESOURCE:
        return resource
    digest = hashlib.sha256(resource.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{resource[: MAX_RESOURCE // 2]}...[{len(resource)} characters, sha256 {digest}]"


def last_lines(path: Path, count: int) -> list[bytes]:
    """The last ``count`` lines of ``path`` as their bytes, without their newlines.

    The end of the file is read, twice as much each time, until it holds them, however
    long they are: a log of gigabytes is not read whole.
    """
    with open(path, "rb") as fp:
        size = fp.seek(0, os.SEEK_END)
        block = 65536
        while True:
            start = max(0, size - block)
            fp.seek(start)
            lines = fp.read(size - start).rstrip(b"\n").split(b"\n")
            if start == 0 or len(lines) > count:  # the first may be cut: one more
                break
            block *= 2  # the lines are longer: read twice as much
    if lines == [b""]:
        return []
    return lines[-count:]


def _tail(path: Path) -> tuple[int, str]:
    """Sequence number and hash of the last complete line (0 and the genesis when empty)."""
    lines = last_lines(path, 1)
    if not lines:
        return 0, GENESIS
    try:
        last = json.loads(lines[-1])
        return int(last["seq"]), str(last["hash"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(
            f"the audit log {path} ends with a damaged line; run 'usreview hub audit --verify'"
        ) from exc


class RefusalLimiter:
    """How many refusals of one anonymous caller are audited line by line (a token bucket).

    A client refused in a loop without a valid token must neither fill the disk with
    audit lines nor make the service fsync for each: each address may have ``burst``
    refusals recorded, refilled at
    ``per_minute``; the rest are counted. The count goes into the caller's next recorded
    refusal (``suppressed``), and :meth:`drain` hands the counts of callers that went
    quiet to the service, which records one ``suppressed`` line for each. Used on the
    service's event loop only (no locks).

    Parameters
    ----------
    burst
        Refusals recorded in a row before counting starts.
    per_minute
        Refill rate of the allowance.
    max_callers
        Callers tracked at once (the quietest are forgotten first, their counts drained).
    clock
        Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        burst: float = 20,
        per_minute: float = 30.0,
        *,
        max_callers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or per_minute < 0 or max_callers < 1:
            raise ValueError("burst and max_callers must be >= 1, per_minute >= 0")
        self.burst = burst
        self.per_minute = per_minute
        self.max_callers = max_callers
        self._clock = clock
        # caller -> [allowance, last refill time, suppressed count]
        self._callers: dict[str, list[float]] = {}
        self._evicted: dict[str, int] = {}

    def admit(self, caller: str) -> int | None:
        """``None`` if this refusal is only counted; else how many were counted before it."""
        now = self._clock()
        state = self._callers.pop(caller, None)  # re-inserted last: the dict stays by age
        if state is None:
            state = [float(self.burst), now, 0]
            self._make_room()
        allowance = min(self.burst, state[0] + (now - state[1]) * self.per_minute / 60)
        state[1] = now
        self._callers[caller] = state
        if allowance < 1:
            state[0] = allowance
            state[2] += 1
            return None
        state[0] = allowance - 1
        counted, state[2] = int(state[2]), 0
        return counted

    def drain(self) -> dict[str, int]:
        """Take the counts of callers whose allowance refilled (or who were forgotten)."""
        now = self._clock()
        taken, self._evicted = self._evicted, {}
        for caller, state in list(self._callers.items()):
            allowance = min(self.burst, state[0] + (now - state[1]) * self.per_minute / 60)
            if state[2] and (allowance >= 1 or self.per_minute == 0):
                taken[caller] = taken.get(caller, 0) + int(state[2])
                state[2] = 0
            if allowance >= self.burst and not state[2]:
                del self._callers[caller]  # full again: nothing to remember
        return taken

    def _make_room(self) -> None:
        while len(self._callers) >= self.max_callers:
            caller = next(iter(self._callers))
            count = int(self._callers.pop(caller)[2])
            if count:
                self._evicted[caller] = self._evicted.get(caller, 0) + count


@dataclass(frozen=True)
class UnchangedReads:
    """One caller's re-reads of one resource answered ``304 Not Modified``, counted."""

    actor: str
    resource: str
    count: int
    first: float  # Unix time of the first and of the last counted re-read
    last: float

    def detail(self) -> dict[str, Any]:
        """The ``unchanged`` audit line's detail: how many, from when to when (UTC)."""
        return {"count": self.count, "from": _iso(self.first), "to": _iso(self.last)}


#: Seconds without a re-read after which a count is recorded (the page was left).
REREAD_QUIET = 30.0


class RereadCounter:
    """Re-reads answered ``304 Not Modified``, counted per caller and resource.

    An open worklist or study page asks again every few seconds; an answer that says
    "unchanged" sends no data, so it is counted rather than audited line by line (the read
    that sent the data was). :meth:`drain` hands over the counts of a caller and resource
    not re-read for ``quiet`` seconds (the page was closed, or changed and read again in
    full) or first counted ``span`` seconds ago (a page left open shows in the log every
    ``span``), and every count when the service stops; the service records one
    ``unchanged`` line for each (:class:`UnchangedReads`). Thread-safe.

    Parameters
    ----------
    quiet, span
        Seconds, as above (``quiet`` at most ``span``).
    max_keys
        Callers and resources counted at once (the oldest are handed over first).
    clock
        Unix time (tests pass a fake one).
    """

    def __init__(
        self,
        quiet: float = REREAD_QUIET,
        span: float = 300.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if quiet <= 0 or span <= 0 or max_keys < 1:
            raise ValueError("quiet and span must be > 0, max_keys >= 1")
        self.quiet, self.span, self.max_keys = min(quiet, span), span, max_keys
        self._clock = clock
        self._counts: dict[tuple[str, str], list[float]] = {}  # -> [count, first, last]
        self._full: list[UnchangedReads] = []  # handed over early to make room
        self._lock = threading.Lock()

    def count(self, actor: str, resource: str) -> None:
        """Count one re-read of ``resource`` by ``actor`` answered 304."""
        now = self._clock()
        with self._lock:
            state = self._counts.get((actor, resource))
            if state is None:
                while len(self._counts) >= self.max_keys:
                    key = next(iter(self._counts))  # the oldest first count
                    self._full.append(_reads(key, self._counts.pop(key)))
                self._counts[(actor, resource)] = [1, now, now]
            else:
                state[0] += 1
                state[2] = now

    def drain(self, *, everything: bool = False) -> list[UnchangedReads]:
        """Take the counts due (see the class doc), or all of them with ``everything``."""
        now = self._clock()
        with self._lock:
            taken, self._full = self._full, []
            for key, state in list(self._counts.items()):
                if everything or now - state[2] >= self.quiet or now - state[1] >= self.span:
                    taken.append(_reads(key, self._counts.pop(key)))
        return taken


def _reads(key: tuple[str, str], state: list[float]) -> UnchangedReads:
    return UnchangedReads(key[0], key[1], int(state[0]), state[1], state[2])


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify`: how many lines hold, and the first that does not."""

    lines: int
    ok: bool
    first_bad_line: int | None = None
    reason: str = ""


def verify(path: Path, key: bytes, *, anchor: tuple[int, str] | None = None) -> VerifyReport:
    """Check the whole chain of ``path``; never raises for a damaged log, reports it.

    The chain cannot show lines cut from the end. With ``anchor``, the ``(seq, hash)`` of
    the last line of an earlier copy (:func:`anchor_of`, a backup's log), the log must
    also hold that very line: cut below it, or rewritten from some line up to it, it fails.
    """
    prev, expected_seq = GENESIS, 1
    count = 0
    with open(path, "rb") as fp:
        for number, raw in enumerate(fp, 1):
            count = number
            try:
                line = json.loads(raw)
                claimed = line.pop("hash")
            except (ValueError, KeyError, TypeError, AttributeError):
                return VerifyReport(number - 1, False, number, "not a complete audit line")
            if line.get("prev") != prev:
                return VerifyReport(
                    number - 1,
                    False,
                    number,
                    "chain broken: a line was removed, inserted or reordered before this one",
                )
            if line.get("seq") != expected_seq:
                return VerifyReport(number - 1, False, number, "sequence number out of order")
            if not hmac.compare_digest(_digest(key, prev, line), str(claimed)):
                return VerifyReport(number - 1, False, number, "line altered (hash mismatch)")
            if anchor is not None and number == anchor[0] and claimed != anchor[1]:
                return VerifyReport(
                    number - 1,
                    False,
                    number,
                    "not the line the earlier copy ends with: the log was rewritten up to here",
                )
            prev, expected_seq = str(claimed), expected_seq + 1
    if anchor is not None and count < anchor[0]:
        return VerifyReport(
            count,
            False,
            count + 1,
            f"the log ends at line {count} but the earlier copy holds {anchor[0]}: "
            "lines were cut from its end",
        )
    return VerifyReport(count, True)


def anchor_of(copy: Path) -> tuple[int, str]:
    """The ``(seq, hash)`` of the last line of ``copy``, an earlier copy of the log.

    Raises
    ------
    AuditError
        ``copy`` cannot be read, is empty, or its last line is not an audit line.
    """
    try:
        last = last_lines(copy, 1)
    except OSError as exc:
        raise AuditError(f"cannot read the earlier copy {copy}: {exc.strerror}") from None
    try:
        line = json.loads(last[0])
        seq, digest = line["seq"], line["hash"]
    except (IndexError, ValueError, KeyError, TypeError):
        raise AuditError(f"{copy} does not end with an audit line") from None
    if not isinstance(seq, int) or seq < 1 or not isinstance(digest, str):
        raise AuditError(f"{copy} does not end with an audit line")
    return seq, digest
