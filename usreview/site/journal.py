"""The spool's write-ahead journal: one fdatasync acknowledges what every association sent.

Why
---
Written on its own, an instance costs two fsyncs (the file, then its folder after the
rename), and each waits for a commit of the filesystem's own journal, shared with every
other writer on the disk. With this journal the gateway's C-STORE handler writes the
spool file *without* syncing it (it still appears complete or not at all, but a power cut
may lose it), appends a record holding the same bytes to a segment file that was written
in full beforehand, and waits for one ``fdatasync`` of that segment, shared with every
association that appended meanwhile (group commit). Overwriting blocks that already exist
changes no metadata (no size, no extent), so that fdatasync writes data only and does not
wait for a filesystem commit. A sync thread starts that fdatasync as soon as a record is
written, while the handler writes the spool file (creating a file costs about as much as
the disk's flush: done one after the other, the scanner waited for both).

A background thread then makes the spool files durable (an fsync of each file still in
the spool, one folder fsync per batch) and retires a segment once every record in it is
durable in the spool. It waits ``sync_delay`` (5 s) after each record: a file the upload
process sent and removed meanwhile needs no fsync at all, and a burst of instances is not
slowed by fsyncs of its own files. The segment in use is retired after a second without
records, so that a restart seldom has anything to replay.

On disk: two 64 MiB files written (zeros) at the first start, one in use and one ready;
retired segments are reused (two kept ready at most), and a new file is written only
when none is ready. From 4
segments not yet retired, records are synced without delay; beyond 8, or when no free
file is ready, instances are written the direct way until the thread catches up.

Format
------
``SPOOL/journal/`` (mode 0700) holds files of ``segment_size`` bytes (64 MiB by default,
mode 0600), written in full with zeros when created, then reused:

- ``G.wal``, ``G`` the segment's generation in 16 hex digits: a segment in use or waiting
  to be retired; replayed at start-up, in generation order;
- ``G.free``: a new or retired file ready to become the next segment (renamed to a new
  generation, and the folder fsynced, before its first record). Never replayed.

Records start at offset 0 and at every following multiple of 4096 bytes (a record's
blocks are never written again once acknowledged, and never share a page with the
next record's); integers are little-endian::

    magic        4  b"USJ1"
    generation   8  the segment's (a record left by an earlier use of the file has another)
    uid length   2
    data length  8
    sha256      32  SHA-256 of the instance (the spool file is named UID_SHA256.dcm)
    crc32        4  CRC-32 of the 54 bytes above and of the UID
    uid             the SOP Instance UID, ASCII
    data            the instance's bytes as stored in the spool: as received, or sealed
                    with the spool key (:mod:`usreview.site.atrest`)

A record is valid when its magic, generation and CRC match, it lies within the file, a
sealed record opens with the spool key, and the SHA-256 of the instance matches.
Reading a segment stops at its first invalid record: zeros or another generation end it
cleanly; anything else is a torn write (never acknowledged) and is discarded with
everything after it.

A sealed record that is not torn but sealed with a spool key the site no longer lists
is not invalid: replay refuses to go on (:class:`JournalKeyError`, naming the segment and
the key id), keeping the segment, as when no spool key is set at all. The sealed form
(:mod:`usreview.site.atrest`) names its key by id in its first 16 bytes, which lie in the
record's first 512-byte sector with the header and the UID (58 + 64 + 16 bytes at most):
when the CRC matches, that sector was written whole by this record, so its key id is
the one the record was sealed with, whatever happened to the rest of the record. Then:

- key id of no configured key: :class:`JournalKeyError` (never taken for a torn write);
- key id of a configured key (the current one or one in ``folders.retired_spool_keys``)
  and it does not open: the record's later blocks were not all written, a torn write.

Records sealed before key ids (magic ``USRSPL1``) still replay, with every configured
key tried. One that opens with none is torn only if an earlier sealed record of the same
segment opened (a segment is written by one run of the gateway, with one key);
otherwise a wrong key cannot be told from a torn write and replay refuses, saying so.

Guarantees
----------
- :meth:`Journal.append` returns only after an ``fdatasync`` that began after its record
  was completely written: a record it returned for survives a crash of the process, of
  the system or of the power (given a disk that honours flushes and writes a sector
  whole or not at all).
- A segment is retired only when each of its records is durable in the spool (file and
  folder fsynced) or has left the spool (a verified receipt, or ``rejected/``).
- :meth:`Journal.recover` (at the gateway's start, before it listens) replays every valid
  record of every remaining segment, or refuses (nothing discarded) when one is sealed
  with a spool key that is not configured. A record whose file is in the spool with the right
  bytes changes nothing; one whose file is missing or damaged is written again (durably);
  one that had already left the spool comes back, and the upload process finds that the
  hub holds it (a duplicate, never a loss).
- Generations only grow (the next is above every file name in the folder), so a stale
  record in a reused file is never taken for a new one.
- An instance above :attr:`Journal.max_record` bytes, and any instance when the journal
  cannot take it (no free segment ready yet, too many segments not yet retired, an I/O
  error), raises :class:`JournalUnavailable`: the spool then writes it the direct way
  (temporary file, fsync, rename, folder fsync), as without a journal.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from usreview.envelope.atomic import fsync_directory
from usreview.site.atrest import SpoolCipher
from usreview.site.errors import SpoolError, SpoolKeyError

__all__ = [
    "MAGIC",
    "SEGMENT_SIZE",
    "SYNC_DELAY",
    "Journal",
    "JournalKeyError",
    "JournalRecord",
    "JournalUnavailable",
    "Recovery",
]

_log = logging.getLogger(__name__)

MAGIC = b"USJ1"
#: Size of a segment file (bytes).
SEGMENT_SIZE = 64 << 20
#: Larger instances are written directly: their two fsyncs are small beside the bytes.
MAX_RECORD = 8 << 20
#: Seconds a record waits before its spool file is synced: most files are uploaded and
#: acknowledged by then, and need no fsync at all.
SYNC_DELAY = 5.0
_HEADER = struct.Struct("<4sQHQ32sI")
_ALIGN = 4096
_UID_MAX = 64
#: Free files kept for reuse (more are deleted when retired).
_KEEP_FREE = 2
#: Segments not yet retired beyond which the journal refuses records (the spool's
#: durable write takes over until the background thread catches up); from half as many,
#: records are synced without waiting for SYNC_DELAY.
_MAX_LIVE = 8
#: With nothing appended for this long and everything durable in the spool, the
#: segment in use is retired (so a crash then replays nothing).
_IDLE_RETIRE = 1.0
_NAME = re.compile(r"(?P<n>[0-9a-f]{16})\.(?P<kind>wal|free)")
_ZEROS = bytes(1 << 20)


class JournalUnavailable(SpoolError):
    """The journal cannot take this record now: write it the direct way."""


class JournalKeyError(SpoolKeyError):
    """A journal record is sealed with a spool key that is not configured: not replayed.

    The segment is kept, nothing is discarded: configure the key (``folders.spool_key``,
    or the old key in ``folders.retired_spool_keys``) and start again.

    Attributes
    ----------
    segment
        The segment file.
    offset
        The record's offset in it.
    key_id
        The id of the key that sealed the record (None: sealed before key ids).
    """

    def __init__(self, message: str, segment: Path, offset: int, key_id: str | None) -> None:
        super().__init__(message)
        self.segment = segment
        self.offset = offset
        self.key_id = key_id


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """A valid record read back from a segment."""

    sop_instance_uid: str
    sha256: str
    data: bytes
    generation: int
    offset: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """What :meth:`Journal.recover` found: segments, valid records, those written again."""

    segments: int
    records: int
    restored: int
    torn: int


@dataclass(eq=False, slots=True)
class _Segment:
    generation: int
    path: Path
    fd: int
    offset: int = 0
    count: int = 0  # records written
    done: int = 0  # records durable in the spool (or gone from it)
    pinned: bool = False  # a record could not be made durable: replayed at the next start


@dataclass(frozen=True, slots=True)
class _Pending:
    segment: _Segment
    name: str
    at: float


class Journal:
    """The write-ahead journal in ``folder``; one writer (process) at a time.

    Use: :meth:`recover`, then :meth:`start`, then :meth:`append` from any thread, then
    :meth:`close`.

    Parameters
    ----------
    folder
        Created with mode 0700 if missing.
    make_durable
        Called from the background thread with the spool file names of a batch of
        records: makes each durable if it is still there. Raising ``OSError`` keeps
        their segments until the next start, which replays them.
    segment_size
        Bytes per segment file; records up to a quarter of it (at most 8 MiB) are taken.
    sync_delay
        Seconds a record waits before the background thread makes its spool file
        durable (files acknowledged meanwhile need no fsync); none once half the
        segments allowed are in use.
    cipher
        The spool key, to open sealed records at :meth:`recover` (None: no key).
    """

    def __init__(
        self,
        folder: Path,
        make_durable: Callable[[Sequence[str]], None],
        *,
        segment_size: int = SEGMENT_SIZE,
        sync_delay: float = SYNC_DELAY,
        cipher: SpoolCipher | None = None,
    ) -> None:
        if segment_size < 1 << 16 or segment_size % 4096:
            raise ValueError(f"segment_size {segment_size} is not a multiple of 4096 >= 64 KiB")
        self.folder = Path(folder)
        self.segment_size = segment_size
        self.max_record = min(MAX_RECORD, segment_size // 4)
        self.sync_delay = sync_delay
        self.cipher = cipher
        #: fdatasync calls made for appends (group commits), for tests and benchmarks.
        self.syncs = 0
        self._make_durable = make_durable
        # _lock: the segments, the offset, the counters. _cond (its own lock): the group
        # commit. Order: _lock, then _cond; never wait on _cond while holding _lock.
        self._lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._written = 0
        self._durable = 0
        self._syncing = False
        self._broken: OSError | None = None
        self._closed = False
        self._active: _Segment | None = None
        self._live: list[_Segment] = []  # not retired, oldest first (the active one last)
        self._free: list[Path] = []
        self._pending: deque[_Pending] = deque()
        self._last_append = time.monotonic()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._kick = threading.Event()  # a record was written: the sync thread starts one
        self._syncer: threading.Thread | None = None
        self._stop_syncer = False
        self._recoverable: list[tuple[int, Path]] = []
        created = not self.folder.exists()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created:
            fsync_directory(self.folder.parent)
        numbers = [0]
        for entry in os.scandir(self.folder):
            match = _NAME.fullmatch(entry.name)
            if match is None:
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)  # a free file being created when we crashed
                continue
            number = int(match["n"], 16)
            numbers.append(number)
            if match["kind"] == "wal":
                self._recoverable.append((number, Path(entry.path)))
            elif entry.stat().st_size == segment_size and len(self._free) < _KEEP_FREE:
                self._free.append(Path(entry.path))
            else:  # another segment size, or more than are kept
                os.unlink(entry.path)
        self._recoverable.sort()
        self._next = max(numbers) + 1

    # -- start-up ------------------------------------------------------------------

    def recover(self, restore: Callable[[JournalRecord], bool]) -> Recovery:
        """Replay the segments left by the last run, then retire them.

        ``restore`` is called for every valid record, oldest first, and returns whether
        it wrote the instance again; then ``make_durable`` is called with every record's
        name (files found in place may never have been synced) and the segment is
        retired. A torn tail is discarded (logged).

        Raises
        ------
        OSError
            A record could not be restored or made durable (its segment is kept).
        SpoolKeyError
            A record is sealed and no spool key is set, or (:class:`JournalKeyError`)
            sealed with a key that is not configured: its segment and every later one
            are kept, nothing is discarded.
        """
        records = restored = torn = 0
        for generation, path in self._recoverable:
            tail_torn = False
            names = []
            for record in _read_segment(path, generation, self.cipher):
                if record is None:
                    tail_torn = True
                    continue
                records += 1
                if restore(record):
                    restored += 1
                names.append(f"{record.sop_instance_uid}_{record.sha256}.dcm")
            # The files found in place may never have been synced: sync them before the
            # segment goes (make_durable's OSError ends the start-up, keeping it).
            self._make_durable(names)
            if tail_torn:
                torn += 1
                _log.warning(
                    "journal %s ends with a torn record (never acknowledged): discarded",
                    path.name,
                )
            self._retire_file(path)
        if self._recoverable:
            fsync_directory(self.folder)
        recovery = Recovery(len(self._recoverable), records, restored, torn)
        self._recoverable = []
        return recovery

    def start(self) -> None:
        """Open the first segment and the background thread (writing free files if needed).

        Raises
        ------
        OSError
            The first segment cannot be written (disk full).
        """
        if self._recoverable:
            raise RuntimeError("recover() the journal before starting it")
        while len(self._free) < _KEEP_FREE:  # the first segment, and one ready
            self._free.append(self._new_free_file())
        with self._lock:
            self._roll()
        self._thread = threading.Thread(target=self._run, name="spool-journal", daemon=True)
        self._thread.start()
        self._syncer = threading.Thread(
            target=self._run_syncs, name="spool-journal-sync", daemon=True
        )
        self._syncer.start()

    # -- appending -----------------------------------------------------------------

    def append(
        self,
        sop_instance_uid: str,
        sha256: str,
        data: bytes | memoryview,
        *,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        """Append a record; return once it is on disk (group commit).

        ``sha256`` is the hex SHA-256 of the instance, ``data`` its stored form (itself,
        or sealed with the spool key); the spool file it stands for is
        ``UID_SHA256.dcm``. ``meanwhile`` runs after the record is written, while the
        sync thread's fdatasync writes it, before the wait for that fdatasync; an
        exception from it is raised (the record stays: harmless).

        Raises
        ------
        JournalUnavailable
            Too large, closed, no room ready, or an I/O error: write it the direct way.
        """
        uid = sop_instance_uid.encode("ascii")
        view = memoryview(data).cast("B")
        if len(view) > self.max_record or len(uid) > _UID_MAX:
            raise JournalUnavailable("too large for the journal")
        size = _HEADER.size + len(uid) + len(view)
        with self._lock:
            if self._closed or self._broken is not None:
                raise JournalUnavailable("the journal is closed")
            segment = self._active
            assert segment is not None
            if segment.offset + size > self.segment_size:
                segment = self._roll()
            header = _header(segment.generation, uid, len(view), bytes.fromhex(sha256))
            offset = segment.offset
            try:
                _pwrite_all(segment.fd, (header, uid, view), offset)
            except OSError as exc:
                raise self._break(exc) from None
            segment.offset += -(-size // _ALIGN) * _ALIGN
            segment.count += 1
            self._written += 1
            ticket = self._written
            now = time.monotonic()
            self._last_append = now
            self._pending.append(_Pending(segment, f"{sop_instance_uid}_{sha256}.dcm", now))
        if self._syncer is not None:
            self._kick.set()  # the fdatasync starts now, in the sync thread
        if meanwhile is not None:
            meanwhile()
        self._wait_durable(ticket)
        # Drop the record's pages, clean now (the journal is read only at start-up).
        with contextlib.suppress(OSError):
            os.posix_fadvise(segment.fd, offset, size, os.POSIX_FADV_DONTNEED)
        if self.sync_delay <= 0:
            self._wake.set()

    def _wait_durable(self, ticket: int) -> None:
        """Return when an fdatasync that began after record ``ticket`` was written ended.

        The first waiter to find no fdatasync running starts one for every record
        written so far; the others wait for it, and the next one starts the next.
        """
        while True:
            with self._cond:
                while self._syncing and self._durable < ticket:
                    self._cond.wait()
                if self._durable >= ticket:
                    return
                if self._broken is not None:
                    raise JournalUnavailable(f"the journal failed: {self._broken}")
                self._syncing = True
            self._sync_written()

    def _run_syncs(self) -> None:
        """The sync thread: an fdatasync as soon as records are written, none running."""
        while True:
            self._kick.wait()
            self._kick.clear()
            if self._stop_syncer:
                return
            with self._lock:
                written = self._written
            with self._cond:
                if self._syncing or self._durable >= written or self._broken is not None:
                    continue  # the waiters lead the next one if this one was too early
                self._syncing = True
            self._sync_written()

    def _sync_written(self) -> None:
        """One fdatasync for every record written so far (``_syncing`` set by the caller)."""
        error: OSError | None = None
        with self._lock:
            target, segment = self._written, self._active
        try:
            if segment is not None:
                os.fdatasync(segment.fd)
        except OSError as exc:
            error = exc
        with self._cond:
            self._syncing = False
            self.syncs += 1
            if error is None:
                self._durable = max(self._durable, target)
            elif self._broken is None:
                self._broken = error
                _log.error("journal fdatasync failed (%s): writing directly from now", error)
            self._cond.notify_all()

    def _roll(self) -> _Segment:
        """Switch to the next segment (``_lock`` held); the previous one is synced first."""
        if not self._free:
            self._wake.set()  # the background thread writes one
            raise JournalUnavailable("no free journal segment ready yet")
        if len(self._live) >= _MAX_LIVE:
            raise JournalUnavailable("the journal is full: the spool is behind")
        old = self._active
        try:
            if old is not None and old.count:
                os.fdatasync(old.fd)
                with self._cond:
                    self._durable = max(self._durable, self._written)
                    self._cond.notify_all()
            generation = self._next
            path = self.folder / f"{generation:016x}.wal"
            os.rename(self._free[-1], path)
            self._free.pop()
            fsync_directory(self.folder)  # the new name before its first record
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise self._break(exc) from None
        self._next += 1
        segment = _Segment(generation, path, fd)
        self._active = segment
        self._live.append(segment)
        self._wake.set()
        return segment

    def _break(self, exc: OSError) -> JournalUnavailable:
        with self._cond:
            if self._broken is None:
                self._broken = exc
                _log.error("the spool's journal failed (%s): writing directly from now", exc)
            self._cond.notify_all()
        return JournalUnavailable(f"the journal failed: {exc}")

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        """Make everything durable in the spool, retire the segments, stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            written = self._written
        if written and self._broken is None:
            with contextlib.suppress(JournalUnavailable):
                self._wait_durable(written)
        if self._syncer is not None:
            self._stop_syncer = True
            self._kick.set()
            self._syncer.join()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        else:
            self._drain(closing=True)
        with self._lock:
            active, self._active = self._active, None
        if active is not None:
            self._retire([active] if active.done == active.count and not active.pinned else [])
        for segment in self._live:  # pinned: kept for the next start
            with contextlib.suppress(OSError):
                os.close(segment.fd)
        self._live = []

    # -- the background thread -----------------------------------------------------

    def _run(self) -> None:
        while True:
            closing = self._closed
            try:
                self._drain(closing=closing)
                if closing:
                    return
                self._retire_if_idle()
                self._keep_free_file()
            except Exception:  # retried on the next round; nothing is retired unsynced
                _log.exception("the spool journal's background work failed")
                if closing:
                    return
                self._wake.wait(1.0)
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        with self._lock:
            if self._pending:
                if self._filling():
                    return 0.0
                ripe = self._pending[0].at + self.sync_delay - time.monotonic()
                return max(0.0, min(ripe, _IDLE_RETIRE))
        return _IDLE_RETIRE

    def _drain(self, *, closing: bool) -> None:
        """Make the ripe records durable in the spool; retire the segments that are done."""
        while True:
            with self._lock:
                hurry = closing or self._filling()
                horizon = time.monotonic() - (0.0 if hurry else self.sync_delay)
                batch: list[_Pending] = []
                while self._pending and self._pending[0].at <= horizon and len(batch) < 256:
                    batch.append(self._pending.popleft())
            if not batch:
                return
            try:
                self._make_durable([item.name for item in batch])
                ok = True
            except OSError as exc:
                _log.error("spooled instances not made durable (kept in the journal): %s", exc)
                ok = False
            with self._lock:
                for item in batch:
                    item.segment.done += 1
                    item.segment.pinned |= not ok
                done = [
                    segment
                    for segment in self._live
                    if segment is not self._active
                    and segment.done == segment.count
                    and not segment.pinned
                ]
            self._retire(done)

    def _filling(self) -> bool:
        """Whether half the segments allowed are in use (``_lock`` held): sync now."""
        return len(self._live) >= _MAX_LIVE // 2

    def _retire_if_idle(self) -> None:
        with self._lock:
            active = self._active
            if (
                active is None
                or not active.count
                or active.done != active.count
                or self._pending
                or time.monotonic() - self._last_append < _IDLE_RETIRE
                or not self._free
                or self._closed
            ):
                return
            try:
                self._roll()
            except JournalUnavailable:
                return
        self._retire([active] if not active.pinned else [])

    def _retire(self, segments: list[_Segment]) -> None:
        if not segments:
            return
        with self._lock:
            self._live = [s for s in self._live if s not in segments]
        with self._cond:  # an fdatasync in progress may use one of their descriptors
            while self._syncing:
                self._cond.wait()
            for segment in segments:
                os.close(segment.fd)
        for segment in segments:
            self._retire_file(segment.path)
        fsync_directory(self.folder)

    def _retire_file(self, path: Path) -> None:
        """Make ``path`` a free file, or delete it when enough are kept."""
        with self._lock:
            keep = len(self._free) < _KEEP_FREE
        try:
            if keep and path.stat().st_size == self.segment_size:
                free = path.with_suffix(".free")
                os.rename(path, free)
                with self._lock:
                    self._free.append(free)
            else:
                path.unlink()
        except FileNotFoundError:
            pass

    def _keep_free_file(self) -> None:
        with self._lock:
            wanted = not self._free and len(self._live) < _MAX_LIVE and not self._closed
        if wanted:
            free = self._new_free_file()
            with self._lock:
                self._free.append(free)

    def _new_free_file(self) -> Path:
        """Write a segment-sized file of zeros, fsynced, named ``N.free``."""
        with self._lock:
            number = self._next
            self._next += 1
        path = self.folder / f"{number:016x}.free"
        tmp = self.folder / f".{number:016x}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            for offset in range(0, self.segment_size, len(_ZEROS)):
                _pwrite_all(fd, (_ZEROS[: self.segment_size - offset],), offset)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        os.close(fd)
        os.rename(tmp, path)
        fsync_directory(self.folder)
        return path


def _header(generation: int, uid: bytes, length: int, sha256: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, generation, len(uid), length, sha256, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(uid, zlib.crc32(head)))


def _pwrite_all(fd: int, parts: Sequence[bytes | memoryview], offset: int) -> None:
    views = [memoryview(part).cast("B") for part in parts]
    total = sum(len(view) for view in views)
    done = os.pwritev(fd, views, offset)
    while done < total:  # a short write: the rest, one part at a time
        skip = done
        for view in views:
            if skip >= len(view):
                skip -= len(view)
                continue
            written = os.pwrite(fd, view[skip:], offset + done)
            if written <= 0:
                raise OSError(f"no progress writing at offset {offset + done}")
            done += written
            break


def _read_segment(
    path: Path, generation: int, cipher: SpoolCipher | None = None
) -> Iterator[JournalRecord | None]:
    """The valid records of a segment, then ``None`` if it ends with a torn record.

    A record's ``data`` is the instance's bytes (sealed records are opened).

    Raises
    ------
    SpoolKeyError
        A sealed record and no spool key (``folders.spool_key`` was removed).
    JournalKeyError
        A record sealed with a key that is not configured (see the module's docstring).
    """
    opened = False  # a sealed record of this segment opened: its key is configured
    with path.open("rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            head = os.pread(fd, _HEADER.size, offset)
            if len(head) < _HEADER.size:  # the file ends inside a header
                if head.strip(b"\0"):
                    yield None
                return
            magic, gen, uid_len, length, sha, crc = _HEADER.unpack(head)
            if magic != MAGIC or gen != generation:
                return  # zeros, or a record of the file's earlier use: the clean end
            end = offset + _HEADER.size + uid_len + length
            uid = os.pread(fd, uid_len, offset + _HEADER.size)
            if (
                uid_len > _UID_MAX
                or end > size
                or zlib.crc32(uid, zlib.crc32(head[:-4])) != crc
                or not uid.isascii()
            ):
                yield None
                return
            data = os.pread(fd, length, offset + _HEADER.size + uid_len)
            if len(data) == length and SpoolCipher.is_sealed(data):
                key_id = SpoolCipher.sealed_key_id(data)
                if cipher is None:
                    sealer = f"spool key {key_id}" if key_id else "a spool key"
                    raise SpoolKeyError(
                        f"the spool's journal segment {path} holds instances sealed with "
                        f"{sealer}: set folders.spool_key in site.toml to replay it "
                        "(nothing was discarded)"
                    )
                if key_id is not None and not cipher.knows(key_id):
                    raise _key_error(path, offset, uid, key_id, cipher)
                try:
                    data = cipher.open(uid.decode("ascii"), sha.hex(), data)
                except SpoolKeyError:  # sealed before key ids; no configured key opens it
                    if not opened:
                        raise _key_error(path, offset, uid, None, cipher) from None
                    yield None  # an earlier record opened: this one's key is configured
                    return
                except SpoolError:  # its key is configured: the record is cut short
                    yield None
                    return
                opened = True
            elif len(data) != length:
                yield None
                return
            if hashlib.sha256(data).digest() != sha:
                yield None
                return
            yield JournalRecord(uid.decode("ascii"), sha.hex(), data, generation, offset)
            offset = -(-end // _ALIGN) * _ALIGN


def _key_error(
    path: Path, offset: int, uid: bytes, key_id: str | None, cipher: SpoolCipher
) -> JournalKeyError:
    where = (
        f"the spool's journal segment {path} holds a record (offset {offset}, "
        f"SOP Instance UID {uid.decode('ascii')})"
    )
    if key_id is not None:
        message = (
            f"{where} sealed with spool key {key_id}, which is not configured "
            f"(configured: {cipher.describe()}): list that key's file in "
            "folders.retired_spool_keys in site.toml (or set it back as folders.spool_key) "
            "and start again; the journal is kept, nothing was discarded"
        )
    else:
        message = (
            f"{where} sealed before spool key ids that opens with no configured key "
            f"({cipher.describe()}): list the spool key of the last run in "
            "folders.retired_spool_keys in site.toml and start again; the journal is kept, "
            "nothing was discarded. Only if that key is already configured is the record "
            "a write a crash cut short (never acknowledged): then remove the segment file"
        )
    return JournalKeyError(message, path, offset, key_id)
