"""Files that appear complete or not at all.

:func:`new_file` writes to a temporary file in the target's folder (created with
``O_EXCL`` and mode 0600, so a private key or a plaintext is never readable by others,
even for a moment), fsyncs it, publishes it under its final name without ever
overwriting (hard link, or rename after a check where links are unsupported), then
fsyncs the folder. On any exception the temporary file is removed and the final
name never appears. Unsealing uses it as its quarantine. :func:`replace_file` is the
same for a file that is meant to be replaced (a key ring, a spooled instance, a cursor),
and :func:`replacing_file` its streamed form (a result copied into a site's outbox);
:func:`fsync_directory` makes a folder's entries durable. These are the project's one
durable-write path: the store, the site's spool and the hub's state use them too.

A writer holds an ``flock`` on its temporary file until it is published or removed, so
:func:`remove_leftovers` tells the files a killed writer left (``SIGKILL``, power loss)
from those still being written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "fsync_directory",
    "new_file",
    "remove_leftovers",
    "replace_file",
    "replacing_file",
    "write_new_file",
]


@contextlib.contextmanager
def new_file(
    path: Path,
    *,
    mode: int = 0o600,
    suffix: str = ".part",
    before_publish: Callable[[], None] | None = None,
    durable: bool = True,
) -> Iterator[BinaryIO]:
    """Yield a temporary binary file that becomes ``path`` when the block succeeds.

    ``before_publish`` runs after the data is on disk and before the file gets its name;
    if it raises, the file is removed. ``durable=False`` skips both fsyncs (file and
    folder): the file still appears complete or not at all to other processes, but may
    be lost in a power cut. Only for files deleted right after use (a quarantine).

    Raises
    ------
    FileExistsError
        If ``path`` exists (checked before writing and again when publishing).
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", str(path))

    def publish(tmp: str) -> None:
        if before_publish is not None:
            before_publish()
        _publish(tmp, path)

    with _written(path, mode=mode, suffix=suffix, durable=durable, publish=publish) as f:
        yield f


def write_new_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to the new file ``path`` atomically (see :func:`new_file`); an
    :class:`OSError` (a full disk) names ``path``."""
    with _naming(path), new_file(path, mode=mode) as f:
        f.write(data)


def replace_file(path: Path, data: bytes | memoryview, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically, replacing any older version (fsynced); an
    :class:`OSError` (a full disk) names ``path``."""
    with _naming(path), replacing_file(path, mode=mode) as f:
        f.write(data)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Give an :class:`OSError` that names no file ``path`` ("No space left on device"
    alone does not say which file); only around writes of bytes, where it is ``path``'s."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror or str(exc), str(path)) from exc


@contextlib.contextmanager
def replacing_file(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a temporary binary file that replaces ``path`` when the block succeeds.

    The streamed form of :func:`replace_file` (for a copy too large to hold in memory):
    the file is fsynced, renamed over ``path`` and the folder fsynced; on any exception
    the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    with _written(
        path, mode=mode, suffix=".part", durable=True, publish=lambda tmp: os.replace(tmp, path)
    ) as f:
        yield f


@contextlib.contextmanager
def _written(
    path: Path, *, mode: int, suffix: str, durable: bool, publish: Callable[[str], None]
) -> Iterator[BinaryIO]:
    """A temporary file beside ``path`` for the block; then fsync it and ``publish`` it.

    ``publish`` gets the temporary file's name and gives it its final one; the folder is
    fsynced after. On any exception (in the block or in ``publish``) the temporary file
    is removed. ``durable=False`` skips both fsyncs.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:  # name the file asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        with contextlib.suppress(OSError):  # no locks here: remove_leftovers cannot lock it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.fchmod(fd, mode)
        with open(fd, "wb") as f:  # open, so locked, until published
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
            publish(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_directory(path.parent)


def remove_leftovers(path: Path, suffix: str = ".part") -> list[Path]:
    """Remove the temporary files of ``path`` that killed writers left; return them.

    Only names the writers of ``path`` here give them (``.NAME.XXXXXXXX`` + ``suffix``,
    the ``suffix`` of :func:`new_file`), and of those only regular files of this user
    that no live writer holds locked. Files that cannot be checked are kept.
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + "[a-z0-9_]{8}" + re.escape(suffix))
    try:
        entries = [e for e in os.scandir(path.parent) if pattern.fullmatch(e.name)]
    except OSError:  # no folder: writing the file reports it
        return []
    removed: list[Path] = []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            fd = os.open(entry.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if os.path.samestat(st, os.fstat(fd)):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a writer still runs
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _publish(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(
            errno.EEXIST, "refusing to overwrite an existing file", str(path)
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():  # no hard links here: check, then rename
            raise FileExistsError(
                errno.EEXIST, "refusing to overwrite an existing file", str(path)
            ) from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def fsync_directory(directory: Path) -> None:
    """Make new, renamed or removed names in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
