"""Envelopes that no index row names, held under ``ROOT/orphans/`` until ingested again.

:meth:`Archive.recover <usreview.store.Archive.recover>` moves each object that no row
names to ``ROOT/orphans/KEY`` (same key), never deleting it: after an index restored
older than the objects, the sites hold signed receipts for them. Administrators list
them (:func:`held_orphans`) and put each one back through the upload's ingest
(``usreview hub orphans --reingest``, :mod:`usreview.hub.commands`); once the store has
committed it (or kept it aside as a conflict), :func:`release_orphan` removes the held
copy.

Recovery and re-ingest exclude each other through :func:`recovery_lock` (an exclusive
``flock`` on ``ROOT/recover.lock``): otherwise a service starting while an orphan is
ingested again could move the object just written, before its row is committed, back
into ``orphans/``, and releasing the held copy would then lose the envelope.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from usreview.envelope.atomic import fsync_directory
from usreview.store._shared import guard
from usreview.store.errors import CorruptObjectError, NotFoundError

if TYPE_CHECKING:
    from usreview.store.archive import Archive

__all__ = ["LOCK_FILE", "HeldOrphan", "held_orphans", "recovery_lock", "release_orphan"]

#: The lock file under the archive root that recovery and re-ingest take in turn.
LOCK_FILE = "recover.lock"


@dataclass(frozen=True, slots=True)
class HeldOrphan:
    """An object held in ``ROOT/orphans/``: its key (where it was), file and size."""

    key: str
    path: Path
    size: int


def held_orphans(archive: Archive) -> list[HeldOrphan]:
    """Every object held in the archive's ``orphans/`` folder, ``objects/`` area first.

    Instances before envelopes kept aside as conflicts, so that ingesting them again in
    this order keeps an instance stored and its conflicting copy aside, as they were.

    Raises
    ------
    StorageError
        The folder cannot be read.
    """
    with guard("listing the orphan objects"):
        return [HeldOrphan(key, path, path.stat().st_size) for key, path in archive._objects.held()]


@contextlib.contextmanager
def recovery_lock(root: Path) -> Iterator[None]:
    """Hold ``ROOT/recover.lock`` exclusively (waiting for it) while the block runs.

    :meth:`~usreview.store.Archive.recover` takes it, and so does each re-ingest of an
    orphan, in any process (see the module docstring).

    Raises
    ------
    StorageError
        The lock file cannot be opened.
    """
    with guard("locking the archive's recovery"):
        fd = os.open(Path(root) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def release_orphan(archive: Archive, key: str, *, kept_as: str) -> None:
    """Remove the held orphan ``key`` once the archive keeps its content as ``kept_as``.

    ``kept_as`` is the object key of the instance stored (or found already stored with
    the same content) or of the conflict kept aside; it must be on disk with its bytes
    intact, else the held copy stays.

    Raises
    ------
    NotFoundError
        ``key`` is not held.
    CorruptObjectError
        ``kept_as`` is missing or its bytes changed (the held copy stays).
    StorageError
        The disk failed.
    """
    held = archive._objects.held_path(key)
    with guard("removing a re-ingested orphan"):
        try:
            found, _ = archive._objects.hash(kept_as)
        except FileNotFoundError:
            found = ""
        if found != kept_as.rsplit("/", 1)[-1]:
            raise CorruptObjectError(
                f"the archive's copy {kept_as} of orphan {key} is missing or changed; the "
                "orphan stays held: run fsck and tell an administrator"
            )
        try:
            held.unlink()
        except FileNotFoundError:
            raise NotFoundError(f"no orphan {key} is held") from None
        fsync_directory(held.parent)
