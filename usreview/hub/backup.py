"""A consistent copy of a running hub's state directory (``usreview hub backup DEST``).

A plain ``tar`` of the state while the hub runs is not consistent: the SQLite databases
are in WAL mode, so their committed pages may still be in ``-wal`` files, and a file
copied while it is written is torn. :func:`backup_state` copies, in this order:

1. every SQLite database (the archive's index with its jobs, results and teaching
   rows, the replay cache, ``accounts.sqlite``, ``jupyterhub.sqlite``) with SQLite's
   online backup API, each one a snapshot of its committed transactions;
2. then every other file: the archive's objects, results and teaching copies, the
   keys (mode 0600), the audit log (read under its lock, so no line is torn), the
   configuration, the users' folders.

The archive writes an object before the row that names it, so every row of the index
copy names an object that already existed when the files were copied: the copy never
holds a row whose object is missing. Objects written after the index was copied are
extra; when the copy is restored, the service's start-up recovery moves them to
``archive/orphans/`` (:meth:`~usreview.store.Archive.recover`), where an administrator
can ingest them again. What only lives while the hub runs is left out: ``spool/``,
``quarantine/`` (plaintexts), ``processing/``, the archive's ``tmp/`` folders, temporary
``.part`` files, the locks and pid files, ``run.json``.

An archive index in PostgreSQL (the service's ``database_url``) is not copied: the
report says so and names the setting; dump it with ``pg_dump`` *before* this backup.

Restoring is copying the folder back while the hub is stopped (``cp -a``), not a
function: the copy is a complete state directory whose databases need no ``-wal``
file, nothing runs that could be written meanwhile, and the administrator keeps the
state being replaced (move it aside) rather than a command overwriting it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from usreview._sqlite import BUSY_TIMEOUT_S
from usreview.envelope.atomic import fsync_directory, new_file
from usreview.hub.api.settings import CONFIG_FILE, DATABASE_URL_ENV, ServiceSettings
from usreview.hub.audit import segment_folder, segments_before
from usreview.hub.errors import StateError
from usreview.hub.hubkeys import keys_lock
from usreview.hub.state import HubState, holds_hub

__all__ = ["BackupError", "BackupReport", "Progress", "backup_state"]

#: ``progress(files_done, files_total, bytes_copied)``, called after each file.
Progress = Callable[[int, int, int], None]

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Folders (relative to the state) that only live while the hub runs.
_TRANSIENT_DIRS = frozenset(
    {"spool", "quarantine", "processing", "archive/tmp", "archive/results/tmp"}
)
#: Files (relative to the state) that only live while the hub runs.
_TRANSIENT_FILES = frozenset(
    {
        "service.lock",
        "hub-keys.lock",
        "run.json",
        "jupyterhub.pid",
        "proxy.pid",
        "worklist.changed",
    }
)
#: SQLite's companion files: their content is in the database's backup.
_COMPANIONS = ("-wal", "-shm", "-journal")
#: Secrets: copied with mode 0600 whatever the source's mode.
_SECRETS = frozenset(
    {"hub.key", "at-rest.key", "audit.key", "cookie_secret", "admin-service.token", "tls.key"}
)


class BackupError(StateError):
    """The backup cannot be made (destination exists, no hub state, a copy failed)."""


@dataclass(frozen=True)
class BackupReport:
    """What :func:`backup_state` copied, and what it could not.

    ``databases`` are the SQLite files copied with the online backup API (relative
    paths); ``files`` and ``bytes`` count everything copied (databases included);
    ``vanished`` are files removed while the backup ran (not copied); ``not_copied``
    says what needs another tool (an archive index in PostgreSQL).
    """

    destination: Path
    databases: tuple[str, ...]
    files: int
    bytes: int
    vanished: tuple[str, ...] = ()
    not_copied: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when the copy holds the whole state (nothing left for ``pg_dump``)."""
        return not self.not_copied


def backup_state(
    state_root: Path, destination: Path, *, progress: Progress | None = None
) -> BackupReport:
    """Copy the state directory of a hub, running or not, to the new folder ``destination``.

    See the module docstring for the order and what is left out. ``destination`` is
    created with mode 0700; files keep their modes (keys 0600).

    Raises
    ------
    BackupError
        ``destination`` exists or is inside the state, ``state_root`` holds no hub, or a
        file or database cannot be read or written (the message names it).
    """
    root = Path(state_root).absolute()
    dest = Path(destination).absolute()
    if not holds_hub(root):
        raise BackupError(f"no hub state in {root}: give the hub's --state")
    if dest.is_relative_to(root):
        raise BackupError(f"{dest} is inside the state directory {root}: back up elsewhere")
    if dest.exists():
        raise BackupError(f"{dest} exists: give a new folder for the backup")
    not_copied = _index_elsewhere(root)
    # Built beside the destination, which appears only once the copy is complete.
    work = dest.with_name(f".{dest.name}.partial")
    try:
        work.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # /backups/2026-11-28
        work.mkdir(mode=0o700)
    except FileExistsError:
        raise BackupError(f"{work} is left from a failed backup: remove it first") from None
    except OSError as exc:
        raise BackupError(f"cannot create {work}: {exc.strerror}") from None
    try:
        os.chmod(work, 0o700)  # whatever the umask
        with keys_lock(HubState(root)):  # no rotation meanwhile: keys and transitions agree
            copied = _copy_state(root, work, progress)
        if dest.exists():
            raise FileExistsError(errno.EEXIST, "made while the backup ran", str(dest))
        work.rename(dest)
        fsync_directory(dest.parent)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError):
            raise BackupError(
                f"backing up {root} to {dest} failed at {exc.filename or 'a file'}: "
                f"{exc.strerror or exc}"
            ) from None
        if isinstance(exc, sqlite3.Error):
            raise BackupError(f"copying a database of {root} failed: {exc}") from None
        raise
    databases, files, size, vanished = copied
    return BackupReport(
        destination=dest,
        databases=databases,
        files=files,
        bytes=size,
        vanished=vanished,
        not_copied=not_copied,
    )


def _copy_state(
    root: Path, dest: Path, progress: Progress | None
) -> tuple[tuple[str, ...], int, int, tuple[str, ...]]:
    """Copy the databases, then the files; return the databases, files and bytes copied
    and the files that vanished meanwhile."""
    databases = [_relative(root, p) for p in _walk(root) if _is_sqlite(p)]
    for name in databases:  # first: every row they hold names a file already there
        _copy_database(root / name, dest / name)
    copied = sum((dest / name).stat().st_size for name in databases)
    known = set(databases)
    files = [name for name in (_relative(root, p) for p in _walk(root)) if name not in known]
    done, total, vanished = len(databases), len(databases) + len(files), []
    if progress is not None:
        progress(done, total, copied)
    audit_log = HubState(root).audit_log.name
    # The log's closed segments go with the copy of its current file (see below).
    segments = f"{segment_folder(root / audit_log).name}/"
    files = [name for name in files if not name.startswith(segments)]
    for name in files:
        source = root / name
        try:
            if _is_sqlite(source):  # made since the databases were copied
                _copy_database(source, dest / name)
                databases.append(name)
            else:
                _copy_file(source, dest / name, audit_log=name == audit_log)
            copied += (dest / name).stat().st_size
        except FileNotFoundError as exc:
            if exc.filename is not None and Path(exc.filename) != source:
                raise
            vanished.append(name)  # removed meanwhile (a result superseded, a case removed)
        done += 1
        if progress is not None:
            progress(done, total, copied)
    if (dest / audit_log).exists():
        # Those closed before the copied file began: one rotated since holds its lines.
        for segment in segments_before(root / audit_log, dest / audit_log):
            name = _relative(root, segment)
            _copy_file(segment, dest / name)
            copied += segment.stat().st_size
            done += 1
            if progress is not None:
                progress(done, max(done, total), copied)
    return tuple(databases), done - len(vanished), copied, tuple(vanished)


def _index_elsewhere(root: Path) -> tuple[str, ...]:
    """Sentences for an archive index this backup cannot copy (PostgreSQL, outside)."""
    url = ServiceSettings.from_state(root).database_url
    if not url:
        return ()
    setting = (
        f'the service\'s database_url ("ServiceSettings": {{"database_url": ...}} in '
        f"{root / CONFIG_FILE}, else ${DATABASE_URL_ENV})"
    )
    try:
        parsed = make_url(url)
    except ArgumentError:
        return (f"the archive index is at {setting}, which is not a URL: back it up yourself",)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.drivername.startswith("sqlite"):
        path = Path(parsed.database or "").absolute()
        if path.is_relative_to(root):
            return ()
        return (
            f"the archive index {path} ({setting}) is outside the state directory: copy it "
            f"with 'sqlite3 {path} \".backup FILE\"' before this backup",
        )
    return (
        f"the archive index is in PostgreSQL at {shown} ({setting}): it is not in this "
        "backup; dump it with 'pg_dump --format=custom' before each backup, so that the "
        "objects copied here are never older than the index",
    )


def _walk(root: Path) -> list[Path]:
    """The regular files of the state to copy, in a stable order (see the module doc)."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if _relative(root, here / d) not in _TRANSIENT_DIRS)
        for name in sorted(names):
            path = here / name
            relative = _relative(root, path)
            if relative in _TRANSIENT_FILES or _temporary(name):
                continue
            if name.endswith(_COMPANIONS) and (here / _base(name)).exists():
                continue
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(path.lstat().st_mode):
                    found.append(path)
    return found


def _temporary(name: str) -> bool:
    """Whether ``name`` is an atomic writer's temporary file (``.NAME.XXXXXXXX.part``)."""
    return name.startswith(".") and name.endswith(".part")


def _base(name: str) -> str:
    """The database a companion file (``-wal``, ``-shm``, ``-journal``) belongs to."""
    for suffix in _COMPANIONS:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _is_sqlite(path: Path) -> bool:
    """Whether ``path`` is a SQLite database (by its header); False if it vanished."""
    try:
        with path.open("rb") as f:
            return f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except FileNotFoundError:
        return False


def _target_folder(target: Path) -> None:
    """Create ``target``'s folder (and parents) with mode 0700."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)


def _mode(source: Path) -> int:
    """The mode the copy of ``source`` gets: its own, 0600 for a secret."""
    if source.name in _SECRETS:
        return 0o600
    return stat.S_IMODE(source.stat().st_mode)


def _copy_database(source: Path, target: Path) -> None:
    """Copy the SQLite database ``source`` with the online backup API (one snapshot)."""
    _target_folder(target)
    mode = _mode(source)
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    os.chmod(target, mode)
    src = sqlite3.connect(f"{source.as_uri()}?mode=rw", timeout=BUSY_TIMEOUT_S, uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # all pages in one step: one read transaction, one snapshot
            (check,) = dst.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"the copy of {source} does not check: {check}")
        finally:
            dst.close()
    finally:
        src.close()
    _fsync(target)


def _copy_file(source: Path, target: Path, *, audit_log: bool = False) -> None:
    """Copy ``source`` durably to the new file ``target`` with its mode; the audit log is
    read under its lock, so that no line being appended is torn."""
    _target_folder(target)
    with source.open("rb") as f:
        if audit_log:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # released when closed
        with new_file(target, mode=_mode(source)) as out:
            shutil.copyfileobj(f, out, 1 << 20)


def _fsync(path: Path) -> None:
    """Make the file ``path`` and its name durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(path.parent)
