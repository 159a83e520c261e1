"""Durable object files: temp file, fsync, rename, directory fsync.

Objects are content-addressed by the SHA-256 of their bytes under an *area* of the
archive root (``objects/`` for stored envelopes, ``conflicts/`` for those kept aside)::

    ROOT/objects/ab/ab12...ef     one file per distinct envelope
    ROOT/conflicts/cd/cd34...01
    ROOT/tmp/                     files being written (removed by recovery)
    ROOT/orphans/objects/ef/ef56...23   an object no row names, moved aside by recovery

A key is the path relative to the root (``objects/ab/ab12...ef``). :meth:`ObjectStore.write`
returns only when the bytes and the name are on disk; a crash before that leaves at most
a file in ``tmp/``, a crash after it an object that no row names yet (an orphan).
Recovery never deletes an orphan (it may be an acknowledged object whose row is gone):
:meth:`ObjectStore.hold` moves it to ``ROOT/orphans/`` under the same key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from usreview.envelope.atomic import fsync_directory

__all__ = ["AREAS", "ORPHANS", "ObjectStore", "WrittenObject", "make_durable_dir", "move_durably"]

#: The areas of content-addressed objects under the root.
AREAS = ("objects", "conflicts")
#: The folder under a store's root where recovery moves what no row names (never deleted).
ORPHANS = "orphans"
_CHUNK = 1 << 20
_KEY = re.compile(r"(objects|conflicts)/([0-9a-f]{2})/([0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class WrittenObject:
    """An object that is durably on disk under ``key``."""

    key: str
    sha256: str
    size: int


def make_durable_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) so that its name itself is durable."""
    if directory.is_dir():
        return
    make_durable_dir(directory.parent)
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    fsync_directory(directory.parent)


def move_durably(source: Path, target: Path) -> None:
    """Move the file or folder ``source`` to ``target`` (same file system), both names durable.

    Missing folders of ``target`` are made (mode 0700); an existing file ``target`` is
    replaced, an existing folder must be empty.
    """
    make_durable_dir(target.parent)
    os.replace(source, target)
    fsync_directory(target.parent)
    fsync_directory(source.parent)


class ObjectStore:
    """Content-addressed durable files under ``root``.

    Parameters
    ----------
    root
        The archive root; created (durably) if missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        for name in (*AREAS, "tmp"):
            make_durable_dir(self.root / name)

    def path(self, key: str) -> Path:
        """The file of ``key``; keys that are not object keys are refused."""
        if not _KEY.fullmatch(key):
            raise ValueError(f"not an object key: {key!r}")
        return self.root / key

    def write(self, area: str, source: Path | bytes) -> WrittenObject:
        """Copy ``source`` (a file or bytes) durably into ``area``; return its key.

        Writing the same bytes again is harmless: the rename replaces the file by an
        identical one.
        """
        if area not in AREAS:
            raise ValueError(f"unknown area {area!r}")
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(prefix="put-", suffix=".part", dir=self.tmp)
        try:
            with open(fd, "wb") as out:
                for chunk in _chunks(source):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            key = f"{area}/{sha[:2]}/{sha}"
            target = self.root / key
            make_durable_dir(target.parent)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_directory(target.parent)
        return WrittenObject(key, sha, size)

    def open(self, key: str) -> BinaryIO:
        """Open the object ``key`` for reading."""
        return self.path(key).open("rb")

    def hash(self, key: str) -> tuple[str, int]:
        """SHA-256 and size of the object ``key`` as it is on disk now."""
        digest = hashlib.sha256()
        size = 0
        for chunk in _chunks(self.path(key)):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size

    def exists(self, key: str) -> bool:
        """Whether the object ``key`` is on disk."""
        return self.path(key).is_file()

    def keys(self, area: str) -> Iterator[str]:
        """Every object key on disk in ``area`` (files not named like objects are skipped)."""
        base = self.root / area
        for sub in sorted(base.iterdir()):
            if not sub.is_dir():
                continue
            for entry in sorted(sub.iterdir()):
                key = f"{area}/{sub.name}/{entry.name}"
                if _KEY.fullmatch(key):
                    yield key

    def remove(self, key: str) -> None:
        """Remove the object ``key`` durably (no error if it is already gone)."""
        path = self.path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fsync_directory(path.parent)

    def hold(self, key: str) -> None:
        """Move the object ``key`` durably to ``ROOT/orphans/KEY`` (folders 0700).

        The same key holds the same bytes, so replacing one held before is harmless.
        """
        move_durably(self.path(key), self.held_path(key))

    def held_path(self, key: str) -> Path:
        """Where the object ``key`` is when held (``ROOT/orphans/KEY``)."""
        self.path(key)  # refuses what is not an object key
        return self.root / ORPHANS / key

    def held(self) -> Iterator[tuple[str, Path]]:
        """The key and file of every object held in ``ROOT/orphans/``, area by area."""
        for area in AREAS:
            base = self.root / ORPHANS / area
            if not base.is_dir():
                continue
            for sub in sorted(base.iterdir()):
                for entry in sorted(sub.iterdir()) if sub.is_dir() else ():
                    key = f"{area}/{sub.name}/{entry.name}"
                    if _KEY.fullmatch(key) and entry.is_file():
                        yield key, entry

    def clean_tmp(self) -> int:
        """Remove every file left in ``tmp/`` by interrupted writes; return how many."""
        removed = 0
        for entry in self.tmp.iterdir():
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
                removed += 1
        if removed:
            fsync_directory(self.tmp)
        return removed


def _chunks(source: Path | bytes) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), _CHUNK):
            yield bytes(view[start : start + _CHUNK])
        return
    with Path(source).open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
