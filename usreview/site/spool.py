"""The gateway's durable spool: instances received and not yet acknowledged by the hub.

One file per instance, named ``UID_SHA256.dcm`` (SOP Instance UID and the SHA-256 of the
file's bytes), so the name alone says what a receipt must name. Writing is durable
before :meth:`Spool.put` returns, so the C-STORE success may be sent:

- without a journal (any process): a temporary file is written and fsynced, renamed to
  its name, and the folder is fsynced;
- through the write-ahead journal (the gateway, :meth:`Spool.open_journal`): the file
  is written and renamed without syncing (other processes see it at once, complete or
  not at all), and a record with the same bytes is appended to ``journal/`` and synced
  with one ``fdatasync`` shared by every association (group commit). A background
  thread fsyncs the files later and retires the journal's segments; at the next start,
  records whose file is missing or damaged (a power cut) are written again.
  :mod:`usreview.site.journal` describes the format and the guarantees.

A file leaves the spool only through
:meth:`Spool.acknowledge` with a SHA-256 that matches (a verified receipt) or
:meth:`Spool.reject` (the hub refused it for good: kept in ``rejected/`` with the reason
beside it). Temporary files left by a crash were never acknowledged to the sender; the
gateway removes them (:meth:`Spool.remove_leftovers`) before it listens.

Several processes may open the spool at once: the gateway writes it, its upload process
empties it, ``usreview site status`` reads it.

The same instance received twice has the same name: stored once, uploaded once. The
same UID with different bytes gets a second file; the hub refuses it (409 conflict) and
it moves to ``rejected/``.

With a spool key (:mod:`usreview.site.atrest`) files and journal records hold the
instance sealed with AES-256-GCM; :meth:`Spool.read` opens them, with the current key or
a retired one (``folders.retired_spool_keys``, after a rotation). A file sealed with a key
that is not configured raises :class:`SpoolKeyError` (the configuration is to fix: keep
the file), one that its own key no longer opens :class:`SpoolError` (damaged). Replaying
the journal refuses a record sealed with a key that is not configured
(:class:`~usreview.site.journal.JournalKeyError`), keeping it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from usreview.dicom.header import is_uid
from usreview.envelope.atomic import fsync_directory, new_file, replace_file
from usreview.site.atrest import SpoolCipher
from usreview.site.errors import SpoolError, SpoolKeyError
from usreview.site.journal import (
    SEGMENT_SIZE,
    SYNC_DELAY,
    Journal,
    JournalRecord,
    JournalUnavailable,
    Recovery,
)

__all__ = ["Spool", "SpooledInstance"]

_log = logging.getLogger(__name__)

_NAME = re.compile(r"(?P<uid>[0-9.]{1,64})_(?P<sha>[0-9a-f]{64})\.dcm")
_TMP = ".*.part"  # temporary files of usreview.envelope.atomic.replace_file
REJECTED = "rejected"
JOURNAL = "journal"


@dataclass(frozen=True, slots=True)
class SpooledInstance:
    """One instance waiting in the spool."""

    path: Path
    sop_instance_uid: str
    sha256: str
    size: int
    spooled_at: float


def check_uid(uid: str) -> str:
    """Return ``uid`` if it is a valid DICOM UID, else raise :class:`SpoolError`."""
    if not is_uid(uid):
        raise SpoolError(f"invalid SOP Instance UID {uid!r}")
    return uid


class Spool:
    """The spool folder ``root`` (created with mode 0700).

    Parameters
    ----------
    root
        The folder; ``root/rejected`` holds instances the hub refused.
    cipher
        The spool key: files and journal records are sealed with its current key and
        opened with it or a retired one (None: plaintext).
    """

    def __init__(self, root: Path, cipher: SpoolCipher | None = None) -> None:
        self.root = Path(root)
        self.cipher = cipher
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.root / REJECTED).mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool {self.root}: {exc}") from None
        self._listeners: list[Callable[[SpooledInstance], None]] = []
        self._lock = threading.Lock()
        self._journal: Journal | None = None
        self._journaled = False  # a file here may not be synced yet (its record is)

    def remove_leftovers(self) -> int:
        """Remove the temporary files a crash left; return how many.

        Only for the process that writes the spool, before it writes: the temporary
        files of a running gateway are in use.
        """
        removed = 0
        for leftover in self.root.glob(_TMP):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        return removed

    def add_listener(self, listener: Callable[[SpooledInstance], None]) -> None:
        """Call ``listener`` after each instance is durably spooled."""
        self._listeners.append(listener)

    def open_journal(
        self, *, segment_size: int = SEGMENT_SIZE, sync_delay: float = SYNC_DELAY
    ) -> Recovery:
        """Write through the journal from now on (the gateway: the spool's one writer).

        First replays what the last run left in ``journal/``: an instance whose file is
        missing or damaged is written again, every file is synced, the segments are
        retired. Then :meth:`put` appends to the journal (see the module's docstring).
        If no journal segment can be written (disk full), :meth:`put` keeps writing
        directly (logged).

        Raises
        ------
        SpoolError
            The journal left by the last run could not be replayed (nothing is lost:
            it is kept, and the gateway should not listen). :class:`SpoolKeyError`
            (:class:`~usreview.site.journal.JournalKeyError`) when a record is sealed
            with a spool key that is not configured, or none is set: the message names
            the segment and the key id.
        """
        if self._journal is not None:
            raise RuntimeError("the journal is open already")
        try:
            journal = Journal(
                self.root / JOURNAL,
                self._make_durable,
                segment_size=segment_size,
                sync_delay=sync_delay,
                cipher=self.cipher,
            )
            recovery = journal.recover(self._restore)
        except OSError as exc:
            raise SpoolError(
                f"cannot replay the spool's journal {self.root / JOURNAL}: {exc.strerror or exc}"
            ) from None
        try:
            journal.start()
        except (OSError, SpoolError) as exc:
            _log.error("the spool's journal cannot start (%s): writing directly", exc)
            return recovery
        self._journaled = True
        self._journal = journal
        return recovery

    def close_journal(self) -> None:
        """Make every journaled instance durable in the spool, and stop the journal."""
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()

    def put(self, sop_instance_uid: str, data: bytes | memoryview) -> SpooledInstance:
        """Store one instance durably; return only when it is on disk.

        Raises
        ------
        SpoolError
            An invalid UID, or the write failed (disk full, I/O error).
        """
        check_uid(sop_instance_uid)
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / f"{sop_instance_uid}_{sha}.dcm"
        if self.cipher is not None:
            data = self.cipher.seal(sop_instance_uid, sha, data)
        journal = self._journal
        try:
            if journal is None or not self._put_journaled(
                journal, path, sop_instance_uid, sha, data
            ):
                if self._journaled or not path.exists():
                    # (after the journal, a file there may not be synced yet)
                    replace_file(path, data, mode=0o600)
                else:  # received again: its name may still await the first writer's fsync
                    fsync_directory(self.root)
        except OSError as exc:
            raise SpoolError(f"cannot spool {sop_instance_uid}: {exc.strerror or exc}") from None
        item = SpooledInstance(path, sop_instance_uid, sha, len(data), time.time())
        for listener in self._listeners:
            listener(item)
        return item

    @staticmethod
    def _put_journaled(
        journal: Journal, path: Path, uid: str, sha: str, data: bytes | memoryview
    ) -> bool:
        """Write ``path`` unsynced and append its record; False: write it directly."""
        if len(data) > journal.max_record:
            return False

        def write_file() -> None:  # while the disk writes the record
            if not path.exists():
                with (
                    contextlib.suppress(FileExistsError),
                    new_file(path, mode=0o600, durable=False) as f,
                ):
                    f.write(data)

        try:
            journal.append(uid, sha, data, meanwhile=write_file)
        except JournalUnavailable:
            return False
        return True

    def _make_durable(self, names: Sequence[str]) -> None:
        """Fsync each named file where it is now (spool or ``rejected/``), then the folders."""
        folders: set[Path] = set()
        for name in names:
            for folder in (self.root, self.root / REJECTED):
                try:
                    fd = os.open(folder / name, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                folders.add(folder)
                break
            # else gone: acknowledged by a verified receipt, nothing to keep
        for folder in sorted(folders):
            fsync_directory(folder)

    def _restore(self, record: JournalRecord) -> bool:
        """Write ``record``'s instance again unless it is in place; True if written."""
        try:
            check_uid(record.sop_instance_uid)
        except SpoolError:
            _log.error("journal record with an invalid UID %r skipped", record.sop_instance_uid)
            return False
        name = f"{record.sop_instance_uid}_{record.sha256}.dcm"
        for path in (self.root / name, self.root / REJECTED / name):
            if self._holds(path, record):
                return False
        data: bytes = record.data
        if self.cipher is not None:
            data = self.cipher.seal(record.sop_instance_uid, record.sha256, data)
        replace_file(self.root / name, data, mode=0o600)
        return True

    def _holds(self, path: Path, record: JournalRecord) -> bool:
        """Whether ``path`` exists and holds ``record``'s instance."""
        if self.cipher is None:
            return _holds(path, record.sha256, len(record.data))
        try:
            return self.read_file(path, record.sop_instance_uid, record.sha256) is not None
        except (SpoolError, OSError):
            return False

    def read_file(self, path: Path, uid: str, sha256: str) -> bytes | None:
        """The instance in ``path`` (opened if sealed), checked against ``sha256``.

        Returns None when the file is gone.

        Raises
        ------
        SpoolKeyError
            Sealed with a key that is not configured (current or retired), or sealed and
            no key set: the file is sound, the configuration is to fix.
        SpoolError
            Damaged: its hash changed, or its own key does not open it.
        OSError
            The file cannot be read now (kept: try again later).
        """
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if SpoolCipher.is_sealed(data):
            if self.cipher is None:
                raise SpoolKeyError(
                    f"{path.name} is sealed with a spool key: set folders.spool_key in site.toml"
                )
            data = self.cipher.open(uid, sha256, data)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise SpoolError(f"{path.name}: damaged in the spool (its hash changed)")
        return data

    def read(self, item: SpooledInstance) -> bytes | None:
        """The bytes of ``item`` as received (None if it has left the spool meanwhile).

        Raises
        ------
        SpoolError, OSError
            See :meth:`read_file`.
        """
        return self.read_file(item.path, item.sop_instance_uid, item.sha256)

    def item(self, name: str) -> SpooledInstance | None:
        """The instance spooled as ``name`` (a file name), or None if it is not there."""
        match = _NAME.fullmatch(name)
        if match is None:
            return None
        path = self.root / name
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        return SpooledInstance(path, match["uid"], match["sha"], info.st_size, info.st_mtime)

    def pending(self) -> list[SpooledInstance]:
        """The instances waiting, oldest first."""
        items = []
        for entry in os.scandir(self.root):
            match = _NAME.fullmatch(entry.name)
            if match is None or not entry.is_file():
                continue
            try:
                info = entry.stat()
            except FileNotFoundError:
                continue
            items.append(
                SpooledInstance(
                    Path(entry.path), match["uid"], match["sha"], info.st_size, info.st_mtime
                )
            )
        items.sort(key=lambda item: (item.spooled_at, item.path.name))
        return items

    def depth(self) -> tuple[int, int]:
        """Number and total bytes of the instances waiting."""
        items = self.pending()
        return len(items), sum(item.size for item in items)

    def acknowledge(self, item: SpooledInstance, sha256: str) -> bool:
        """Remove ``item`` if ``sha256`` (from a verified receipt) is its hash.

        Returns False, keeping the file, when the hashes differ.
        """
        if sha256 != item.sha256:
            return False
        with contextlib.suppress(FileNotFoundError):
            item.path.unlink()
        return True

    def reject(self, item: SpooledInstance, reason: str) -> Path:
        """Move ``item`` to ``rejected/`` with ``NAME.reason.json``; return its new path."""
        target = self.root / REJECTED / item.path.name
        note = {
            "sop_instance_uid": item.sop_instance_uid,
            "sha256": item.sha256,
            "reason": reason,
            "rejected_at": time.time(),
        }
        with self._lock:
            replace_file(target.with_suffix(".reason.json"), json.dumps(note).encode(), mode=0o600)
            with contextlib.suppress(FileNotFoundError):
                os.replace(item.path, target)
            fsync_directory(self.root / REJECTED)
        return target

    def rejected(self) -> list[dict[str, object]]:
        """The notes of the rejected instances (UID, hash, reason, time)."""
        notes = []
        for path in sorted((self.root / REJECTED).glob("*.reason.json")):
            with contextlib.suppress(OSError, ValueError):
                notes.append(json.loads(path.read_text()))
        return notes


def _holds(path: Path, sha256: str, size: int) -> bool:
    """Whether ``path`` exists with ``size`` bytes hashing to ``sha256``."""
    try:
        if path.stat().st_size != size:
            return False
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == sha256
    except FileNotFoundError:
        return False
