"""Instances the hub refused for good: ``usreview site rejected``.

The upload process moves an instance the hub refuses for good to the spool's
``rejected/`` folder, with ``NAME.reason.json`` beside it (:meth:`Spool.reject`); with
a spool key (:mod:`usreview.site.atrest`) it stays sealed there. :func:`list_rejected`
lists them with the reason recorded; :func:`export_rejected` writes decrypted copies,
checked against the SHA-256 in their name, into a folder (``NAME.dcm``, mode 0600,
written durably, never overwritten) and appends one JSON line per copy to
``STATE/exports.log`` (when, which operating-system user, which instance, where to).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from usreview.envelope.atomic import fsync_directory, write_new_file
from usreview.site.config import SiteConfig
from usreview.site.errors import SpoolError
from usreview.site.spool import REJECTED, Spool, check_uid

__all__ = ["EXPORTS_LOG", "ExportReport", "RejectedInstance", "export_rejected", "list_rejected"]

#: In the site's state folder: one JSON line per rejected instance exported.
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
            _log_export(config.state, item, target)  # recorded before the copy exists
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
                _log_export(config.state, item, target, failed=why)
            continue
        report.written.append(target)
    return report


def _holds(path: Path, sha256: str) -> bool:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == sha256
    except FileNotFoundError:
        return False


def _log_export(
    state: Path, item: RejectedInstance, target: Path, *, failed: str | None = None
) -> None:
    """Append the export of ``item`` to ``STATE/exports.log`` (its failure, with ``failed``:
    why the recorded copy was not written); on disk when this returns.

    Raises
    ------
    SpoolError
        The log cannot be written.
    """
    line = {
        "at": time.time(),
        "user": _user(),
        "action": "export_rejected" if failed is None else "export_failed",
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
        raise SpoolError(f"cannot record the export in {path}: {exc.strerror or exc}") from None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"uid {os.getuid()}"
