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
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from usreview.hub.errors import AuditError

__all__ = ["AuditAction", "AuditError", "AuditLog", "VerifyReport", "verify"]

GENESIS = "0" * 64


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

    def record(
        self,
        actor: str,
        action: AuditAction | str,
        resource: str,
        *,
        outcome: str = "allowed",
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one event and return it; it is on disk when this returns."""
        action = AuditAction(action)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev = _tail(self.path)
            body: dict[str, Any] = {
                "seq": seq + 1,
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "actor": actor,
                "action": str(action),
                "resource": resource,
                "outcome": outcome,
                "detail": detail or {},
                "prev": prev,
            }
            line = dict(body, hash=_digest(self._key, prev, body))
            data = (json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n").encode()
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)  # also releases the lock
        return line


def _tail(path: Path) -> tuple[int, str]:
    """Sequence number and hash of the last complete line (0 and the genesis when empty)."""
    with open(path, "rb") as fp:
        fp.seek(0, os.SEEK_END)
        size = fp.tell()
        if size == 0:
            return 0, GENESIS
        block = min(size, 65536)
        fp.seek(size - block)
        lines = fp.read(block).rstrip(b"\n").split(b"\n")
    try:
        last = json.loads(lines[-1])
        return int(last["seq"]), str(last["hash"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(
            f"the audit log {path} ends with a damaged line; run 'usreview hub audit --verify'"
        ) from exc


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify`: how many lines hold, and the first that does not."""

    lines: int
    ok: bool
    first_bad_line: int | None = None
    reason: str = ""


def verify(path: Path, key: bytes) -> VerifyReport:
    """Check the whole chain of ``path``; never raises for a damaged log, reports it."""
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
            prev, expected_seq = str(claimed), expected_seq + 1
    return VerifyReport(count, True)
