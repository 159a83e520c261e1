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

Segments. The log does not grow without end: :func:`rotate` (``usreview hub audit
--rotate``, or the service once the file passes
:attr:`~usreview.hub.api.settings.ServiceSettings.audit_segment_bytes`) closes the current
file as a read-only segment ``audit/audit-FIRST-LAST.log`` (the sequence numbers of its
first and last lines) and starts a new ``audit.log`` whose first line, an ``admin``
``rotated`` event naming the segment, continues the chain. Under the file's lock: the
segment is a hard link made first, then a new file with that line replaces the name, so
the log always exists and a writer that waited for the lock on the old file appends to
the new one. :func:`verify` walks the segments, oldest first, then the current file, as
one chain: a missing segment breaks it. Segments can be copied to write-once storage; to
be verified they must be where they were.
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
from usreview.envelope.atomic import fsync_directory
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
    "log_files",
    "rotate",
    "segment_folder",
    "segments_before",
    "tail",
    "verify",
]

GENESIS = "0" * 64
#: Most lines appended with one fsync.
MAX_BATCH = 256
#: Longest resource recorded as it is (longer ones are cut and digested: :func:`_bounded`).
MAX_RESOURCE = 512
#: Seconds an automatic rotation that failed (a full disk) waits before it is tried again.
ROTATE_RETRY_SECONDS = 60.0
#: Attempts to append to the log while it is being rotated by another process.
_REOPEN_ATTEMPTS = 20

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
    segment_bytes
        Once an append leaves the file at least this large, it is rotated (see the
        module's doc); ``None`` never rotates. A rotation that fails leaves the lines
        recorded and is tried again after :data:`ROTATE_RETRY_SECONDS`.
    """

    def __init__(self, path: Path, key: bytes, *, segment_bytes: int | None = None) -> None:
        if len(key) < 32:
            raise AuditError("the audit key must be at least 32 bytes")
        self.path = Path(path)
        self._key = key
        self._segment_bytes = segment_bytes
        self._rotate_after = 0.0  # monotonic time before which no rotation is tried
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
        fd = _open_locked(self.path)
        try:
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
            size = found.st_size + sum(map(len, chunks))
            self._left = (found.st_dev, found.st_ino, size)
            self._last = (seq, prev)
            if self._segment_bytes is not None and size >= self._segment_bytes:
                self._rotate_now(fd)
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)  # also releases the lock
        return outcomes

    def _rotate_now(self, fd: int) -> None:
        """Rotate after an append (the lock held); a failure waits for the next try."""
        if time.monotonic() < self._rotate_after:
            return
        try:
            _, self._last, self._left = _rotate_locked(self.path, self._key, "usreview", self._last)
        except (OSError, AuditError):  # the lines are on disk: rotate another time
            self._left = None
            self._rotate_after = time.monotonic() + ROTATE_RETRY_SECONDS


def _open_locked(path: Path) -> int:
    """A descriptor of the log ``path`` (created when missing), locked exclusively.

    A rotation may replace the file while this waits for its lock: then the new file is
    opened and locked instead.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    for _ in range(_REOPEN_ATTEMPTS):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, named = os.fstat(fd), os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        except OSError as exc:
            os.close(fd)
            raise AuditError(f"cannot lock the audit log {path}: {exc.strerror}") from exc
        if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
            return fd
        os.close(fd)  # rotated meanwhile: the name is a new file now
    raise AuditError(f"the audit log {path} keeps being replaced: cannot append to it")


def segment_folder(path: Path) -> Path:
    """The folder of the closed segments of the log ``path`` (``audit/`` for ``audit.log``)."""
    return path.parent / path.stem


def log_files(path: Path) -> list[Path]:
    """The closed segments of the log ``path``, oldest first, then ``path`` (if it exists).

    A segment that is still the current file (a rotation cut short before it replaced
    the file) is not one.
    """
    folder = segment_folder(path)
    digits = "[0-9]" * 12
    found = sorted(folder.glob(f"{path.stem}-{digits}-{digits}.log")) if folder.is_dir() else []
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return found
    same = (current.st_dev, current.st_ino)
    closed = [f for f in found if (f.stat().st_dev, f.stat().st_ino) != same]
    return [*closed, path]


def segments_before(path: Path, copy: Path) -> list[Path]:
    """The closed segments of the log ``path`` that end before the first line of ``copy``
    (a copy of its current file, or an empty one): what goes with that copy.

    A segment closed after the copy was made holds the copy's lines: it is left out.
    """
    first = _first_seq(copy) if copy.stat().st_size else None
    return [
        segment
        for segment in log_files(path)
        if segment != path and (first is None or int(segment.stem.rsplit("-", 1)[1]) < first)
    ]


def rotate(path: Path, key: bytes, actor: str) -> Path | None:
    """Close the log ``path`` as a segment and start a new file (see the module's doc).

    Returns the segment, or ``None`` when the current file has no line yet.

    Raises
    ------
    AuditError
        The log cannot be read, locked or written; it is then as it was.
    """
    if not path.exists():
        return None
    fd = _open_locked(path)
    try:
        if os.fstat(fd).st_size == 0:
            return None  # nothing in this file to close (its lines, if any, are in segments)
        segment, _, _ = _rotate_locked(path, key, actor, _tail(path))
    except OSError as exc:
        raise AuditError(f"cannot rotate the audit log {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return segment


def _rotate_locked(
    path: Path, key: bytes, actor: str, last: tuple[int, str]
) -> tuple[Path, tuple[int, str], tuple[int, int, int]]:
    """Rotate ``path``, whose lock the caller holds and whose last line is ``last``;
    return the segment, the new file's only line's ``(seq, hash)`` and the new file's
    ``(device, inode, size)`` as written.

    The new file's lock is not held: once it has the name, another process may append to
    it, so its identity is taken from the descriptor that wrote it, never from the name
    (a size read later would count that process's lines as the rotation's).
    """
    seq, prev = last
    first = _first_seq(path)
    folder = segment_folder(path)
    segment = folder / f"{path.stem}-{first:012d}-{seq:012d}.log"
    if not folder.is_dir():
        folder.mkdir(mode=0o700, exist_ok=True)
        fsync_directory(path.parent)
    # A rotation cut short left a file or a link to the current file: gone, it is redone.
    for stale in path.parent.glob(f".{path.name}.*.new"):
        stale.unlink(missing_ok=True)
    current = os.stat(path)
    for linked in folder.glob(f"{path.stem}-*.log"):
        found = linked.stat()
        if (found.st_dev, found.st_ino) == (current.st_dev, current.st_ino):
            linked.unlink()
    body: dict[str, Any] = {
        "seq": seq + 1,
        "time": _iso(time.time()),
        "actor": actor,
        "action": str(AuditAction.ADMIN),
        "resource": "audit",
        "outcome": "rotated",
        "detail": {"segment": f"{folder.name}/{segment.name}", "lines": seq - first + 1},
        "prev": prev,
    }
    line = dict(body, hash=_digest(key, prev, body))
    new = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n").encode())
        os.fsync(fd)
        written = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        os.link(path, segment)
        fsync_directory(folder)
        os.replace(new, path)
    except BaseException:
        new.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    segment.chmod(0o400)
    return segment, (seq + 1, str(line["hash"])), (written.st_dev, written.st_ino, written.st_size)


def _first_seq(path: Path) -> int:
    """The sequence number of the first line of ``path``."""
    with open(path, "rb") as fp:
        first = fp.readline()
    try:
        return int(json.loads(first)["seq"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"the audit log {path} starts with a damaged line") from exc


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


def tail(path: Path, count: int) -> list[bytes]:
    """The last ``count`` lines of the log ``path``, its segments' too when it holds fewer."""
    lines: list[bytes] = []
    if count < 1:
        return lines
    for file in reversed(log_files(path)):
        lines[:0] = last_lines(file, count - len(lines))
        if len(lines) >= count:
            break
    return lines


def _tail(path: Path) -> tuple[int, str]:
    """Sequence number and hash of the last complete line of the log (0 and the genesis
    when it has none); an empty file continues its last segment."""
    lines = last_lines(path, 1) if path.exists() else []
    if not lines:
        lines = tail(path, 1)
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
    """Result of :func:`verify`: how many lines hold, and the first that does not.

    Lines are numbered through the whole log (their sequence numbers); ``file`` is the
    segment or file holding the first bad line, and ``files`` how many were walked.
    """

    lines: int
    ok: bool
    first_bad_line: int | None = None
    reason: str = ""
    file: Path | None = None
    files: int = 1


def verify(
    path: Path,
    key: bytes,
    *,
    anchor: tuple[int, str] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> VerifyReport:
    """Check the whole chain of the log ``path``, its closed segments first; never raises
    for a damaged log, reports it.

    The chain cannot show lines cut from the end. With ``anchor``, the ``(seq, hash)`` of
    the last line of an earlier copy (:func:`anchor_of`, a backup's log), the log must
    also hold that very line: cut below it, or rewritten from some line up to it, it fails.
    ``progress(files_done, files, lines)`` is called after each file that holds.
    """
    prev, count = GENESIS, 0
    files = log_files(path) or [path]

    def bad(reason: str, file: Path) -> VerifyReport:
        return VerifyReport(count, False, count + 1, reason, file, len(files))

    for index, file in enumerate(files):
        with open(file, "rb") as fp:
            for number, raw in enumerate(fp, 1):
                try:
                    line = json.loads(raw)
                    claimed = line.pop("hash")
                except (ValueError, KeyError, TypeError, AttributeError):
                    return bad("not a complete audit line", file)
                if line.get("prev") != prev:
                    return bad(_break(number, line.get("seq"), files[:index]), file)
                if line.get("seq") != count + 1:
                    return bad("sequence number out of order", file)
                if not hmac.compare_digest(_digest(key, prev, line), str(claimed)):
                    return bad("line altered (hash mismatch)", file)
                if anchor is not None and count + 1 == anchor[0] and claimed != anchor[1]:
                    return bad(
                        "not the line the earlier copy ends with: the log was rewritten up to here",
                        file,
                    )
                prev, count = str(claimed), count + 1
        if progress is not None:
            progress(index + 1, len(files), count)
    if anchor is not None and count < anchor[0]:
        return VerifyReport(
            count,
            False,
            count + 1,
            f"the log ends at line {count} but the earlier copy holds {anchor[0]}: "
            "lines were cut from its end",
            files[-1],
            len(files),
        )
    return VerifyReport(count, True, files=len(files))


def _break(number: int, seq: object, before: list[Path]) -> str:
    """Why a line does not follow the one before it: the reason :func:`verify` gives."""
    if number == 1 and before:
        return (
            f"does not continue {before[-1].name}: a segment between them is missing, "
            "or lines were removed"
        )
    if number == 1 and seq != 1:
        return f"the log starts at line {seq}: the segments before it are missing"
    return "chain broken: a line was removed, inserted or reordered before this one"


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
