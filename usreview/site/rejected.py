"""Instances the hub refused for good: ``usreview site rejected``.

The upload process moves an instance the hub refuses for good to the spool's
``rejected/`` folder, with ``NAME.reason.json`` beside it (:meth:`Spool.reject`); with
a spool key (:mod:`usreview.site.atrest`) it stays sealed there. :func:`list_rejected`
lists them with the reason recorded; :func:`export_rejected` writes decrypted copies,
checked against the SHA-256 in their name, into a folder (``NAME.dcm``, mode 0600,
written durably, never overwritten) and appends one JSON line per copy to
``STATE/exports.log`` (when, which operating-system user, which instance, where to).
:func:`requeue_rejected` moves instances back into the spool, to be uploaded again (one
rename each, so a file is in one folder or the other, never both or neither), recorded in
the same log.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from usreview.envelope.atomic import fsync_directory, write_new_file
from usreview.site.config import SiteConfig
from usreview.site.errors import SpoolError
from usreview.site.spool import REJECTED, Spool, check_uid

__all__ = [
    "EXPORTS_LOG",
    "ExportReport",
    "RejectedInstance",
    "RequeueReport",
    "export_rejected",
    "list_rejected",
    "requeue_rejected",
]

_log = logging.getLogger(__name__)

#: In the site's state folder: one JSON line per rejected instance exported or requeued.
EXPORTS_LOG = "exports.log"
_NOTE = ".reason.json"
_UNKNOWN = "no reason recorded"


@dataclass(frozen=True, slots=True)
class RejectedInstance:
    """An instance in ``rejected/``; ``size`` is None when only its note is left."""

    path: Path
    sop_instance_uid: str
    sha256: str
    size: int | None
    reason: str
    rejected_at: float | None


@dataclass
class ExportReport:
    """What :func:`export_rejected` did: copies written, already there, and failures."""

    written: list[Path] = field(default_factory=list)
    already: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # file name -> reason


@dataclass
class RequeueReport:
    """What :func:`requeue_rejected` did: moved back into the spool, found there already
    (only their note was left in ``rejected/``), and failures."""

    requeued: list[Path] = field(default_factory=list)
    already: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # file name -> reason


def list_rejected(spool: Spool) -> list[RejectedInstance]:
    """The instances in the spool's ``rejected/`` folder, oldest rejection first.

    A note that cannot be read still lists its file, with ``no reason recorded``.
    """
    folder = spool.root / REJECTED
    found: list[RejectedInstance] = []
    names = {p.name for p in folder.glob("*.dcm")} | {
        p.name.removesuffix(_NOTE) + ".dcm" for p in folder.glob("*" + _NOTE)
    }
    for name in names:
        uid, _, sha256 = name.removesuffix(".dcm").rpartition("_")
        try:
            check_uid(uid)
            bytes.fromhex(sha256)
        except (SpoolError, ValueError):
            continue  # not a spool name
        if len(sha256) != 64:
            continue
        reason, at = _note(folder / (name.removesuffix(".dcm") + _NOTE))
        try:
            size: int | None = (folder / name).stat().st_size
        except FileNotFoundError:
            size = None
        found.append(RejectedInstance(folder / name, uid, sha256, size, reason, at))
    found.sort(key=lambda item: (item.rejected_at or 0.0, item.path.name))
    return found


def _note(path: Path) -> tuple[str, float | None]:
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        return _UNKNOWN, None
    if not isinstance(note, dict):
        return _UNKNOWN, None
    reason, at = note.get("reason"), note.get("rejected_at")
    when = None
    if isinstance(at, int | float) and not isinstance(at, bool):
        with contextlib.suppress(OverflowError):  # a JSON integer past any float
            when = float(at) if math.isfinite(at) else None
    return reason if isinstance(reason, str) and reason else _UNKNOWN, when


def export_rejected(
    config: SiteConfig, spool: Spool, items: list[RejectedInstance], folder: Path
) -> ExportReport:
    """Write the DICOM of ``items`` into ``folder`` as received (decrypted, checked).

    An instance whose copy is already there (same SHA-256) is not written again; one
    that is gone, damaged, sealed with another key or sealed without a key configured is
    a failure, and the others are still exported.

    Each copy is recorded in ``STATE/exports.log`` before it is written; a copy that
    cannot be recorded is not written (a failure), and one that cannot be written after it
    was recorded gets a second line, ``"action": "export_failed"`` with the reason.

    Raises
    ------
    SpoolError
        ``folder`` cannot be created.
    """
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoolError(f"cannot create {folder}: {exc.strerror or exc}") from None
    report = ExportReport()
    for item in items:
        target = folder / item.path.name
        try:
            if _holds(target, item.sha256):
                report.already.append(target)
                continue
            data = spool.read_file(item.path, item.sop_instance_uid, item.sha256)
            if data is None:
                raise SpoolError("the file is gone (only its note is left)")
            _record(config.state, item, "export_rejected", target)  # before the copy exists
        except (SpoolError, OSError) as exc:
            report.failed[item.path.name] = str(exc)
            continue
        try:
            write_new_file(target, data, mode=0o600)
        except OSError as exc:
            why = (
                f"{target} exists with other bytes"
                if isinstance(exc, FileExistsError)
                else f"cannot write {target}: {exc.strerror or exc}"
            )
            report.failed[item.path.name] = why
            with contextlib.suppress(SpoolError):  # the report says it failed all the same
                _record(config.state, item, "export_failed", target, failed=why)
            continue
        report.written.append(target)
    return report


def requeue_rejected(
    config: SiteConfig, spool: Spool, items: list[RejectedInstance]
) -> RequeueReport:
    """Move ``items`` from ``rejected/`` back into the spool, for the gateway to upload.

    Each file is renamed to its name in the spool (as received: sealed if it was), both
    folders are synced, then its note is removed: interrupted at any point, the file is in
    one folder or the other. One whose note alone is left (interrupted after the move) is
    ``already`` when the spool holds it, else a failure. The same name in the spool holds
    the same bytes (named by their hash): it is replaced, never doubled.

    Each move is recorded in ``STATE/exports.log`` (``"action": "requeue_rejected"``)
    before it is made; one that cannot be recorded is not made, and one that then fails
    gets a second line, ``"action": "requeue_failed"`` with the reason.
    """
    report = RequeueReport()
    folder = spool.root / REJECTED
    for item in items:
        name = item.path.name
        target = spool.root / name
        note = folder / (name.removesuffix(".dcm") + _NOTE)
        if item.size is None:  # only the note is left
            if target.exists():
                with contextlib.suppress(OSError):
                    _remove(note)
                report.already.append(target)
            else:
                report.failed[name] = "the file is gone (only its note is left)"
            continue
        try:
            _record(config.state, item, "requeue_rejected", target)
        except SpoolError as exc:
            report.failed[name] = str(exc)
            continue
        try:
            os.replace(item.path, target)  # atomic: one folder or the other
            fsync_directory(spool.root)
            fsync_directory(folder)
        except OSError as exc:
            why = f"cannot move {name} into {spool.root}: {exc.strerror or exc}"
            report.failed[name] = why
            with contextlib.suppress(SpoolError):  # the report says it failed all the same
                _record(config.state, item, "requeue_failed", target, failed=why)
            continue
        with contextlib.suppress(OSError):  # a note left behind lists the file as gone
            _remove(note)
        _log.info("%s requeued for upload (rejected: %s)", name, item.reason)
        report.requeued.append(target)
    return report


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fsync_directory(path.parent)


def _holds(path: Path, sha256: str) -> bool:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == sha256
    except FileNotFoundError:
        return False


def _record(
    state: Path, item: RejectedInstance, action: str, target: Path, *, failed: str | None = None
) -> None:
    """Append ``action`` on ``item`` to ``STATE/exports.log``: its export or requeue to
    ``target``, or (with ``failed``) why the recorded one was not made; on disk when this
    returns.

    Raises
    ------
    SpoolError
        The log cannot be written.
    """
    line = {
        "at": time.time(),
        "user": _user(),
        "action": action,
        "sop_instance_uid": item.sop_instance_uid,
        "sha256": item.sha256,
        "reason": item.reason,
        "to": str(target),
        **({} if failed is None else {"failed": failed}),
    }
    path = state / EXPORTS_LOG
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_directory(state)
    except OSError as exc:
        what = "requeue" if action.startswith("requeue") else "export"
        raise SpoolError(f"cannot record the {what} in {path}: {exc.strerror or exc}") from None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"uid {os.getuid()}"
