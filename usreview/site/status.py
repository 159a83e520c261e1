"""What a site is doing: the status files and ``usreview site status``.

Two files in the state folder, each written by one process at a time (atomically):

- ``status.json``: the upload process (and ``pull``) record uploads, results, errors,
  instances held back and instances given up in a :class:`StatusBook` (at most every
  half second); the writer is the process holding ``STATE/uploader.lock``, or ``pull``,
  which holds the gateway's lock. An error that repeats (the same refusal of other
  instances, the same outage) is one entry with a count and its first and last times,
  so it never pushes the others out of the last :data:`MAX_ERRORS`.
- ``gateway.json``: the gateway's own process records its upload process (running or
  restarting, how often, and why it last ended: its last line on stderr) and the
  scanners it refused (C-STORE answered with a failure, associations rejected), in a
  :class:`GatewayBook`.

The ``status`` command reads them together with the spool and the results cursor, so it
works while a gateway runs and when none does; :func:`check_status` sums them up in one
line with a Nagios exit status (``site status --check``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from usreview._locks import lock_held
from usreview.site.config import SiteConfig
from usreview.site.errors import GatewayRunningError, SiteConfigError, SiteError
from usreview.site.spool import Spool
from usreview.site.studies import (
    InstanceHeader,
    StudyReport,
    format_study_reports,
    instance_header,
    study_reports,
)

__all__ = [
    "CERTIFICATE_CRITICAL_DAYS",
    "CERTIFICATE_WARNING_DAYS",
    "GIVEN_UP",
    "HEALTHY_RUN",
    "MAX_ERRORS",
    "CheckState",
    "GatewayBook",
    "SiteStatus",
    "StateLock",
    "StatusBook",
    "check_status",
    "duration",
    "format_held",
    "format_status",
    "format_study_status",
    "gateway_running",
    "local_time",
    "read_cursor",
    "read_held",
    "read_status",
    "read_study_status",
    "study_status_doc",
]

STATUS_FILE = "status.json"
GATEWAY_FILE = "gateway.json"
CURSOR_FILE = "results.cursor"
LOCK_FILE = "gateway.lock"
UPLOADER_LOCK_FILE = "uploader.lock"
#: Distinct errors kept in ``status.json`` (each with its count).
MAX_ERRORS = 20
#: ``site status --check`` warns when a configured certificate expires within this many
#: days, and is critical within :data:`CERTIFICATE_CRITICAL_DAYS` (or once it has expired).
CERTIFICATE_WARNING_DAYS = 30
CERTIFICATE_CRITICAL_DAYS = 7
#: The settings naming certificates, and what each is to the site.
_CERTIFICATES = {
    "hub.certificate": "the hub's pinned certificate",
    "hub.announced": "the hub's next certificates, announced by the hub",
    "gateway.tls_certificate": "the gateway's DICOM TLS certificate",
    "gateway.tls_client_ca": "the scanners' CA certificate",
}
#: How the reason of an instance given up starts, in its ``rejected/`` note.
GIVEN_UP = "given up after"
#: An upload process that ran this long before it ended was working: it is restarted
#: quickly, and its earlier ends no longer count as a crash loop.
HEALTHY_RUN = 60.0
#: How the upload process's last line on stderr starts when it fails (``TYPE: message``
#: follows): the gateway shows the rest in the status.
UPLOAD_PROCESS_FAILED = "usreview site gateway (upload process): "
#: The C-STORE status of a refusal for want of space (the scanner keeps the instance).
OUT_OF_RESOURCES = 0xA700
#: What repeats of one error do not share: UIDs and IP addresses, hashes, numbers.
_VARYING = (
    (re.compile(r"\b\d+(?:\.\d+){2,}\b"), "#"),
    (re.compile(r"\b[0-9a-f]{16,}\b"), "#"),
    (re.compile(r"\d+(?:\.\d+)?"), "#"),
)


def _number(value: Any) -> float | None:
    """``value`` if it is a finite number (not a bool), else None (a damaged record)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _error_key(where: str, message: str) -> str:
    """What the repeats of one error share: ``where`` and the message with its UIDs,
    addresses, hashes and numbers blanked."""
    for pattern, blank in _VARYING:
        message = pattern.sub(blank, message)
    return f"{where}|{message}"


class _Book:
    """A JSON document mirrored to a file of the state folder: written atomically when
    it changed, at most every ``min_interval`` seconds unless forced; a full disk or a
    read-only folder loses an update, never the process."""

    def __init__(self, path: Path, doc: dict[str, Any], min_interval: float) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._min_interval = min_interval
        self._written = 0.0
        self._dirty = False
        self._doc = doc
        with contextlib.suppress(OSError, ValueError):  # what the last writer left
            old = json.loads(self.path.read_text())
            if isinstance(old, dict):
                self._doc.update(old)

    def flush(self, *, force: bool = False) -> None:
        """Write the file if something changed (throttled unless ``force``)."""
        with self._lock:
            now = time.monotonic()
            if not self._dirty or (not force and now - self._written < self._min_interval):
                return
            data = json.dumps(self._doc, indent=1).encode()
            self._dirty = False
            self._written = now
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(OSError):
                tmp.write_bytes(data)
                os.replace(tmp, self.path)


class StatusBook(_Book):
    """Thread-safe record of uploads, results and errors, mirrored to ``status.json``.

    Parameters
    ----------
    state
        The site's state folder.
    min_interval
        Seconds between two writes of the file (unless forced).
    """

    def __init__(self, state: Path, *, min_interval: float = 0.5) -> None:
        super().__init__(
            Path(state) / STATUS_FILE, {"uploads": 0, "results": 0, "errors": []}, min_interval
        )

    def uploaded(self, sop_instance_uid: str, duplicate: bool) -> None:
        """One instance acknowledged by a verified receipt."""
        last = {"sop_instance_uid": sop_instance_uid, "at": time.time(), "duplicate": duplicate}
        self._update("uploads", last_upload=last)

    def result(self, result_id: int, label: str, where: list[str]) -> None:
        """One result delivered."""
        last = {"id": result_id, "label": label, "at": time.time(), "to": where}
        self._update("results", last_result=last)

    def error(
        self,
        where: str,
        message: str,
        *,
        hub_down: bool = False,
        advice: str | None = None,
        key: str | None = None,
        hub: str | None = None,
    ) -> None:
        """Record an error, with what to do about it if known.

        Repeats of an error (same ``where`` and ``key``; without a key, the same message
        but for its UIDs, addresses and numbers) are one entry: ``count``, ``first`` and
        ``at`` (the last time), the latest message and advice. The last
        :data:`MAX_ERRORS` distinct ones are kept. ``hub_down`` records the hub as
        unreachable; ``hub`` records another state of it (``"refusing"``).
        """
        now = time.time()
        group = f"{where}|{key}" if key else _error_key(where, message)
        with self._lock:
            recorded = self._doc.get("errors")
            errors = (
                [e for e in recorded if isinstance(e, dict)] if isinstance(recorded, list) else []
            )
            entry: dict[str, Any] = {
                "at": now,
                "first": now,
                "count": 1,
                "where": where,
                "message": message,
                "key": group,
            }
            for previous in [e for e in errors if e.get("key") == group]:
                errors.remove(previous)
                first, count = _number(previous.get("first")), _number(previous.get("count"))
                entry["first"] = first if first is not None else now
                entry["count"] = int(count) + 1 if count is not None and count >= 1 else 2
            if advice:
                entry["advice"] = advice
            errors.append(entry)
            self._doc["errors"] = errors[-MAX_ERRORS:]
            if hub_down:
                self._set_hub("unreachable", now)
            elif hub is not None:
                self._set_hub(hub, now)
            self._dirty = True
        self.flush(force=True)

    def held(
        self,
        sop_instance_uid: str,
        *,
        reason: str,
        advice: str | None,
        tries: int,
        since: float,
        next_try: float,
    ) -> None:
        """An instance kept in the spool and tried again later (refused for now, or its
        file unreadable): why, how many tries, since when, the next try (Unix times)."""
        record: dict[str, Any] = {
            "reason": reason,
            "tries": tries,
            "since": since,
            "last": time.time(),
            "next": next_try,
        }
        if advice:
            record["advice"] = advice
        with self._lock:
            self._held()[sop_instance_uid] = record
            self._dirty = True
        self.flush()

    def held_since(self, sop_instance_uid: str) -> tuple[float, int] | None:
        """``(since, tries)`` of an instance recorded as held (by this process or the
        one before it), or None."""
        with self._lock:
            record = self._held().get(sop_instance_uid)
        if not isinstance(record, dict):
            return None
        since, tries = _number(record.get("since")), _number(record.get("tries"))
        if since is None:
            return None
        return since, int(tries) if tries is not None and tries >= 0 else 0

    def released(self, sop_instance_uid: str) -> None:
        """The instance is no longer held (acknowledged, rejected, or gone)."""
        with self._lock:
            if self._held().pop(sop_instance_uid, None) is not None:
                self._dirty = True

    def keep_held(self, sop_instance_uids: set[str]) -> None:
        """Forget the instances held that are not among ``sop_instance_uids`` (those in
        the spool): they left it otherwise."""
        with self._lock:
            held = self._held()
            for uid in [uid for uid in held if uid not in sop_instance_uids]:
                del held[uid]
                self._dirty = True

    def given_up(self, sop_instance_uid: str, reason: str) -> None:
        """An instance held for too long, moved to ``rejected/``: counted, the last kept."""
        now = time.time()
        with self._lock:
            self._held().pop(sop_instance_uid, None)
            previous = self._doc.get("given_up")
            count = _number(previous.get("count")) if isinstance(previous, dict) else None
            self._doc["given_up"] = {
                "count": int(count or 0) + 1,
                "last": {"sop_instance_uid": sop_instance_uid, "at": now, "reason": reason},
            }
            self._dirty = True
        self.flush(force=True)

    def removed(self, what: str, why: str, *, count: int = 1) -> None:
        """``count`` results or outbox files removed at the site (``results.keep_days``,
        ``results.outbox = false``): counted, the last one and why kept."""
        with self._lock:
            previous = _mapping(self._doc.get("removed"))
            total = _number(previous.get("count"))
            self._doc["removed"] = {
                "count": int(total or 0) + count,
                "last": {"what": what, "why": why, "at": time.time()},
            }
            self._dirty = True
        self.flush()

    def follower(self, state: str, error: str | None = None) -> None:
        """The results follower's state: ``"running"``, or ``"failed"`` with why."""
        record: dict[str, Any] = {"state": state, "at": time.time()}
        if error is not None:
            record["error"] = error
        with self._lock:
            self._doc["results_follower"] = record
            self._dirty = True
        self.flush(force=True)

    def _held(self) -> dict[str, Any]:
        """The held instances' records (a damaged value is replaced); holds the lock."""
        held = self._doc.get("held")
        if not isinstance(held, dict):
            held = self._doc["held"] = {}
        return held

    def _set_hub(self, state: str, now: float) -> None:
        """The hub's state, and since when it is in it; holds the lock."""
        if self._doc.get("hub") != state or _number(self._doc.get("hub_since")) is None:
            self._doc["hub"] = state
            self._doc["hub_since"] = now

    def _update(self, counter: str, **values: Any) -> None:
        with self._lock:
            self._doc.update(values)
            count = _number(self._doc.get(counter))
            self._doc[counter] = int(count or 0) + 1
            self._set_hub("ok", time.time())
            self._dirty = True
        self.flush()


class GatewayBook(_Book):
    """The gateway process's record, mirrored to ``gateway.json``: its upload process
    (state, restarts, why it last ended) and the scanners it refused.

    Parameters
    ----------
    state
        The site's state folder.
    min_interval
        Seconds between two writes of the file (unless forced).
    """

    def __init__(self, state: Path, *, min_interval: float = 1.0) -> None:
        super().__init__(Path(state) / GATEWAY_FILE, {}, min_interval)  # counts go on

    def scanner_refused(self, status: int, reason: str, calling_ae_title: str | None) -> None:
        """A scanner was refused: a C-STORE answered with failure ``status``, or its
        association rejected (``status`` 0). Counted; the last time and reason kept."""
        now = time.time()
        with self._lock:
            record = self._doc.get("scanner_refusals")
            record = record if isinstance(record, dict) else {}
            count = _number(record.get("count"))
            first = _number(record.get("first"))
            self._doc["scanner_refusals"] = {
                "count": int(count or 0) + 1,
                "first": first if first is not None else now,
                "last": now,
                "status": status,
                "reason": reason,
                "calling_ae_title": calling_ae_title,
            }
            self._dirty = True
        self.flush()

    def upload_process(self, state: str, **values: Any) -> None:
        """The upload process is ``"running"``, ``"restarting"`` or ``"stopped"``;
        ``values`` update its record (``pid``, ``restarts``, ``failures``, ``last_exit``)."""
        with self._lock:
            record = self._doc.get("upload_process")
            record = record if isinstance(record, dict) else {}
            if record.get("state") != state:
                record["since"] = time.time()
            record.update(values, state=state)
            self._doc["upload_process"] = record
            self._dirty = True
        self.flush(force=True)


@dataclass(frozen=True)
class SiteStatus:
    """A snapshot for ``usreview site status``."""

    site: str
    hub_url: str
    gateway_running: bool
    spool_depth: int
    spool_bytes: int
    oldest_spooled: float | None
    rejected: int
    results_cursor: int
    recorded: Mapping[str, Any] = field(default_factory=dict)
    #: Results put aside in ``state/refused/`` (they did not open).
    results_refused: int = 0
    #: Results kept in ``state/quarantine/``: their content names another study.
    results_quarantined: int = 0
    #: Why the results cursor cannot be used (no result is delivered), or ``None``.
    results_cursor_problem: str | None = None
    #: Per PACS: deliveries ``pending`` in its queue and ``failed`` (set aside).
    pacs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    #: The spool's instances the upload process holds back: SOP Instance UID -> why
    #: (``reason``, ``tries``, ``since``, ``next``, as ``status.json`` records them).
    held: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Instances in ``rejected/`` because they were held back for too long.
    given_up: int = 0
    #: When the oldest instance waiting and not held back was spooled.
    oldest_waiting: float | None = None
    #: What the gateway's process records (``gateway.json``): its upload process, the
    #: scanners it refused.
    gateway: Mapping[str, Any] = field(default_factory=dict)
    #: What becomes of results at the site: ``folder`` (the outbox), ``written``
    #: (``results.outbox``), ``keep_days`` (``results.keep_days``; 0: for ever).
    outbox: Mapping[str, Any] = field(default_factory=dict)
    #: Each configured certificate file (by setting, e.g. ``hub.certificate``): its path and
    #: when the first of its certificates expires (Unix time; ``None``: unreadable).
    certificates: Mapping[str, tuple[str, float | None]] = field(default_factory=dict)
    #: The hub's keys the site trusts (:mod:`usreview.site.hubkeys`): ``pinned`` and
    #: ``current`` key ids (16 hex digits; the same until the hub rotated its key),
    #: ``followed`` (rotations followed since the pinned key), or ``error``.
    hub_key: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        recorded = {key: value for key, value in self.recorded.items() if key != "held"}
        return {
            "site": self.site,
            "hub_url": self.hub_url,
            "gateway_running": self.gateway_running,
            "spool": {
                "depth": self.spool_depth,
                "bytes": self.spool_bytes,
                "oldest": self.oldest_spooled,
                "oldest_waiting": self.oldest_waiting,
                "held": len(self.held),
                "rejected": self.rejected,
                "given_up": self.given_up,
            },
            "results_cursor": self.results_cursor,
            "results_refused": self.results_refused,
            "results_quarantined": self.results_quarantined,
            "results_cursor_problem": self.results_cursor_problem,
            "pacs": {name: dict(counts) for name, counts in self.pacs.items()},
            **recorded,
            "held": {uid: dict(record) for uid, record in self.held.items()},
            "gateway": dict(self.gateway),
            "outbox": dict(self.outbox),
            "certificates": {
                name: {"path": path, "expires": expires}
                for name, (path, expires) in self.certificates.items()
            },
            "hub_key": dict(self.hub_key),
        }


class StateLock:
    """An exclusive lock on the state folder: one gateway (or pull) per site at a time.

    Parameters
    ----------
    state
        The site's state folder.
    name
        The lock file: ``gateway.lock`` (the default) or ``uploader.lock``, held by the
        gateway's upload process (one per site, even while a killed gateway's one ends).
    """

    def __init__(self, state: Path, name: str = LOCK_FILE) -> None:
        Path(state).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = Path(state) / name
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; return whether it was taken."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self) -> None:
        """Take the lock.

        Raises
        ------
        GatewayRunningError
            Another process holds it.
        """
        if not self.try_acquire():
            raise GatewayRunningError(
                f"another process (a gateway or a pull) uses {self.path.parent}; "
                "a running gateway delivers results and uploads by itself"
            )

    def release(self) -> None:
        """Give the lock back."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def gateway_running(state: Path) -> bool:
    """True when a process holds the state folder's lock (a gateway, or a pull)."""
    return lock_held(Path(state) / LOCK_FILE)


def read_cursor(state: Path) -> int:
    """The last result cursor delivered (0 when none)."""
    try:
        value = json.loads((Path(state) / CURSOR_FILE).read_text())["cursor"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return int(value) if isinstance(value, int) else 0


def _read_doc(path: Path) -> dict[str, Any]:
    """A status file's document ({} when missing or damaged)."""
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(path.read_text())
        if isinstance(doc, dict):
            return doc
    return {}


def _held_in(recorded: Mapping[str, Any], uids: set[str]) -> dict[str, Mapping[str, Any]]:
    """The records of the instances held back that are still in the spool (``uids``)."""
    held = recorded.get("held")
    if not isinstance(held, dict):
        return {}
    return {uid: r for uid, r in held.items() if uid in uids and isinstance(r, dict)}


def read_status(config: SiteConfig) -> SiteStatus:
    """Collect the site's status from its folders (no network)."""
    spool = Spool(config.spool) if config.spool.exists() else None
    pending = spool.pending() if spool is not None else []
    notes = spool.rejected() if spool is not None else []
    recorded = _read_doc(config.state / STATUS_FILE)
    held = _held_in(recorded, {item.sop_instance_uid for item in pending})
    waiting = [item for item in pending if item.sop_instance_uid not in held]
    pacs = {
        name: {"pending": len(queued), "failed": len(failed)}
        for name, (queued, failed) in _pacs_queues(config).items()
    }
    return SiteStatus(
        results_quarantined=len(list((config.state / "quarantine").glob("*.envelope"))),
        results_cursor_problem=_cursor_problem(config),
        site=config.name,
        hub_url=config.hub_url,
        gateway_running=gateway_running(config.state),
        spool_depth=len(pending),
        spool_bytes=sum(item.size for item in pending),
        oldest_spooled=pending[0].spooled_at if pending else None,
        rejected=len(notes),
        results_cursor=read_cursor(config.state),
        recorded=recorded,
        results_refused=len(list((config.state / "refused").glob("*.envelope"))),
        pacs=pacs,
        held=held,
        given_up=sum(1 for note in notes if str(note.get("reason", "")).startswith(GIVEN_UP)),
        oldest_waiting=waiting[0].spooled_at if waiting else None,
        gateway=_read_doc(config.state / GATEWAY_FILE),
        outbox={
            "folder": str(config.outbox),
            "written": config.results_to_outbox,
            "keep_days": config.outbox_keep_days,
        },
        certificates=_certificates(config),
        hub_key=_hub_key(config),
    )


def _hub_key(config: SiteConfig) -> dict[str, Any]:
    """The pinned and the current hub key ids, how many keys are trusted and whether the
    pinned one still is (a revoking rotation ends it), or why they cannot be read."""
    try:
        pinned = config.load_pinned_hub_key()
        keys = config.load_hub_keys()
    except SiteConfigError as exc:
        return {"error": str(exc)}
    return {
        "pinned": pinned.key_id.hex()[:16],
        "current": keys[-1].key_id.hex()[:16],
        "trusted": len(keys),
        "pinned_revoked": pinned.key_id not in {key.key_id for key in keys},
    }


def _certificates(config: SiteConfig) -> dict[str, tuple[str, float | None]]:
    """The configured certificate files and when the first certificate of each expires."""
    from usreview.site.hubkeys import ANNOUNCED_CERTIFICATES

    announced = config.state / ANNOUNCED_CERTIFICATES
    files = {
        "hub.certificate": config.hub_certificate,
        "hub.announced": announced if config.hub_certificate and announced.exists() else None,
        "gateway.tls_certificate": config.tls_certificate,
        "gateway.tls_client_ca": config.tls_client_ca,
    }
    return {
        name: (str(path), _expires(path, latest=name == "hub.announced"))
        for name, path in files.items()
        if path
    }


def _expires(path: Path, *, latest: bool = False) -> float | None:
    """When the first (``latest``: the last) of the PEM certificates in ``path`` expires;
    ``None`` if unreadable."""
    from usreview.hub.tls import certificate_expiry  # only here: "site status" starts fast

    expires = certificate_expiry(path, latest=latest)
    return None if expires is None else expires.timestamp()


def _certificate_problems(status: SiteStatus, now: float) -> list[tuple[CheckState, str]]:
    """Certificates expired, expiring within the warning days, or unreadable."""
    found: list[tuple[CheckState, str]] = []
    _, successor = status.certificates.get("hub.announced", ("", None))
    for name, (path, expires) in sorted(status.certificates.items()):
        what = f"{_CERTIFICATES.get(name, name)} ({name}, {path})"
        if expires is None:
            found.append((CheckState.WARNING, f"{what} cannot be read"))
            continue
        if name == "hub.certificate" and successor is not None and successor > expires:
            expires = successor  # the hub announced the one it switches to
        days = (expires - now) / 86400
        if days >= CERTIFICATE_WARNING_DAYS:
            continue
        when = time.strftime("%Y-%m-%d", time.gmtime(expires))
        said = f"expired on {when}" if days < 0 else f"expires in {math.ceil(days)} day(s) ({when})"
        state = CheckState.CRITICAL if days < CERTIFICATE_CRITICAL_DAYS else CheckState.WARNING
        found.append((state, f"{what} {said}: renew it"))
    return found


def _cursor_problem(config: SiteConfig) -> str | None:
    """Why the results cursor cannot be used (:func:`usreview.site.cursor.load_cursor`)."""
    from usreview.site.cursor import ResultsCursorError, load_cursor  # it imports this module

    if not config.follow_results:
        return None
    try:
        load_cursor(config)
    except ResultsCursorError as exc:
        return str(exc)
    return None


def _pacs_queues(config: SiteConfig) -> dict[str, tuple[set[int], dict[int, str]]]:
    """Per configured PACS: the result ids queued, and those set aside with the reason."""
    from usreview.site.deliver import PacsQueue

    queue = PacsQueue(config.state / "pacs", config.pacs, config.ae_title)
    found: dict[str, tuple[set[int], dict[int, str]]] = {
        name: (set(), {}) for name in queue.destinations
    }
    for item in queue.pending():
        found[item.destination][0].add(item.result_id)
    for aside in queue.failed():
        found[aside.destination][1][aside.result_id] = aside.reason
    return found


def read_study_status(
    config: SiteConfig, *, study: str | None = None, accession: str | None = None
) -> list[StudyReport]:
    """The studies named by ``study`` (a Study Instance UID) or ``accession``, from the
    per-study journal, the spool (instances waiting) and the PACS queues (no network)."""
    from usreview.site.atrest import load_spool_cipher

    waiting: list[tuple[str, InstanceHeader, float]] = []
    if config.spool.exists():
        try:
            cipher = load_spool_cipher(config)
        except SiteConfigError:  # the instances sealed at rest are counted nowhere
            cipher = None
        spool = Spool(config.spool, cipher)
        for item in spool.pending():
            header = InstanceHeader()
            with contextlib.suppress(OSError, SiteError):
                data = item.path.read_bytes() if cipher is None else spool.read(item)
                if data is not None:
                    header = instance_header(data)
            waiting.append((item.sop_instance_uid, header, item.spooled_at))
    queues = _pacs_queues(config)
    return study_reports(
        config.state,
        study=study,
        accession=accession,
        waiting=waiting,
        pacs_pending={name: queued for name, (queued, _) in queues.items()},
        pacs_failed={name: failed for name, (_, failed) in queues.items()},
    )


def read_held(config: SiteConfig) -> dict[str, Mapping[str, Any]]:
    """The spool's instances the upload process holds back, with why (from
    ``status.json``): SOP Instance UID -> ``reason``, ``tries``, ``since``, ``next``."""
    pending = Spool(config.spool).pending() if config.spool.exists() else []
    recorded = _read_doc(config.state / STATUS_FILE)
    return _held_in(recorded, {item.sop_instance_uid for item in pending})


def _held_of(report: StudyReport, held: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The waiting instances of ``report`` that are held back, sorted."""
    return sorted(uid for uid, s in report.instances.items() if s == "waiting" and uid in held)


def study_status_doc(
    reports: list[StudyReport], held: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """``site status --study/--accession --json``: each report's dict, its instances held
    back under ``instances.held`` (SOP Instance UID -> ``reason``, ``tries``, ``since``)."""
    docs = []
    for report in reports:
        doc = report.to_dict()
        doc["instances"]["held"] = {uid: dict(held[uid]) for uid in _held_of(report, held)}
        docs.append(doc)
    return {"studies": docs}


def format_held(uid: str, record: Mapping[str, Any]) -> str:
    """One instance held back: ``held UID: reason (N tries since T, next try T)``."""
    reason = str(record.get("reason", "?")).removeprefix(f"{uid}: ")
    tries = _number(record.get("tries"))
    since = local_time(record.get("since")) or "?"
    text = f"held {uid}: {reason} ({int(tries or 0)} tries since {since}"
    following = local_time(record.get("next"))
    return text + (f", next try {following})" if following else ")")


def format_study_status(
    reports: list[StudyReport], held: Mapping[str, Mapping[str, Any]], asked: str
) -> str:
    """``site status --study/--accession``: the reports' blocks, each with a line per
    instance held back (why, how many tries, since when) after its instance counts."""
    if not reports:
        return format_study_reports(reports, asked)
    blocks = []
    for report in reports:
        lines = format_study_reports([report], asked).splitlines()
        extra = [f"  {format_held(uid, held[uid])}" for uid in _held_of(report, held)]
        at = next((i for i, line in enumerate(lines) if line.startswith("results ")), len(lines))
        blocks.append("\n".join(lines[:at] + extra + lines[at:]) + "\n")
    return "\n".join(blocks)


def local_time(moment: Any) -> str | None:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``; ``None`` when it is not one (a damaged
    record: text, 1e20, NaN)."""
    if isinstance(moment, bool) or not isinstance(moment, int | float):
        return None
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))
    except (OverflowError, ValueError, OSError):
        return None


def _ago(moment: Any) -> str:
    stamp = local_time(moment)
    if stamp is None:
        return "never" if moment is None else "?"
    return f"{stamp} ({max(0, time.time() - moment):.0f} s ago)"


def duration(seconds: float) -> str:
    """``seconds`` for people: ``45 s``, ``12 min``, ``3.5 h``, ``2.0 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _exit_reason(last_exit: Mapping[str, Any]) -> str:
    """Why the upload process last ended, as the gateway recorded it."""
    return str(last_exit.get("reason") or f"exit status {last_exit.get('code', '?')}")


def format_status(status: SiteStatus) -> str:
    """The human-readable form printed by ``usreview site status``; what a damaged
    ``status.json`` holds in place of a time or a record is shown as ``?`` or left out."""
    rec = status.recorded
    upload = _mapping(rec.get("last_upload"))
    result = _mapping(rec.get("last_result"))
    hub = rec.get("hub", "unknown")
    hub_since = _number(rec.get("hub_since"))
    given_up = (
        f"; {status.given_up} given up after being held back too long ('site rejected "
        "--requeue UID' once the cause is fixed)"
        if status.given_up
        else ""
    )
    lines = [
        f"site          {status.site} -> {status.hub_url}",
        f"gateway       {'running' if status.gateway_running else 'not running'}",
        *_upload_process_lines(status),
        f"hub           {hub}" + (f" since {_ago(hub_since)}" if hub_since is not None else ""),
        f"spool         {status.spool_depth} instance(s), {status.spool_bytes / 1e6:.1f} MB"
        + (f", oldest {_ago(status.oldest_spooled)}" if status.oldest_spooled else ""),
        f"held          {len(status.held)} instance(s) held back, each tried again on its own",
        *(
            f"  {format_held(uid, record)}"
            for uid, record in sorted(
                status.held.items(), key=lambda item: _number(item[1].get("since")) or 0.0
            )[:5]
        ),
        f"rejected      {status.rejected} (see the spool's rejected/ folder){given_up}",
        f"uploads       {rec.get('uploads', 0)}, last {_ago(upload.get('at'))}"
        + (f" {upload.get('sop_instance_uid')}" if upload else ""),
        f"results       {rec.get('results', 0)}, last {_ago(result.get('at'))}"
        + (f" #{result.get('id')} {result.get('label')}" if result else "")
        + f" (cursor {status.results_cursor})"
        + (
            " (cursor unusable: results are not delivered)" if status.results_cursor_problem else ""
        ),
        *(
            [f"cursor        {status.results_cursor_problem}"]
            if status.results_cursor_problem
            else []
        ),
        *_follower_lines(rec),
        f"refused       {status.results_refused} result(s) that did not open (state/refused/;"
        " tried again by the gateway at start and hourly; without one, 'site pull"
        " --retry-refused')",
        f"quarantined   {status.results_quarantined} result(s) whose content names another study"
        " than the feed (state/quarantine/; tell the hub's administrator)",
    ]
    lines += _outbox_lines(status)
    key = status.hub_key
    if key.get("error"):
        lines.append(f"hub key       cannot be read: {key['error']}")
    elif key and key["current"] != key["pinned"]:
        revoked = ", the pinned one revoked" if key["pinned_revoked"] else ""
        lines.append(
            f"hub key       {key['current']} (followed from the pinned {key['pinned']} in "
            f"state/hub-keys.json; {key['trusted']} key(s) trusted{revoked})"
        )
    elif key:
        lines.append(f"hub key       {key['current']} (pinned)")
    for name, (path, expires) in sorted(status.certificates.items()):
        until = (
            "unreadable"
            if expires is None
            else f"valid until {time.strftime('%Y-%m-%d', time.gmtime(expires))}"
        )
        lines.append(f"certificate   {name} ({path}): {until}")
    for name, counts in sorted(status.pacs.items()):
        failed = counts.get("failed", 0)
        lines.append(
            f"pacs {name:<8} {counts.get('pending', 0)} pending, {failed} failed"
            + (f" (state/pacs/{name}/failed/; 'site pacs --retry-failed {name}')" if failed else "")
        )
    refusals = _mapping(status.gateway.get("scanner_refusals"))
    if refusals:
        calling = refusals.get("calling_ae_title")
        lines.append(
            f"scanners      {refusals.get('count', '?')} refused, last {_ago(refusals.get('last'))}"
            + (f" ({calling})" if calling else "")
            + f": {refusals.get('reason')}"
        )
    recorded = rec.get("errors")
    errors = [_mapping(e) for e in recorded] if isinstance(recorded, list) else []
    lines.append(f"errors        {len(errors)} recorded" + (", latest:" if errors else ""))
    for item in errors[-5:]:
        count = _number(item.get("count"))
        repeated = (
            f" [{int(count)} times since {local_time(item.get('first')) or '?'}]"
            if count is not None and count > 1
            else ""
        )
        lines.append(
            f"  {_ago(item.get('at'))} {item.get('where')}: {item.get('message')}{repeated}"
        )
        if isinstance(item.get("advice"), str):
            lines.append(f"    -> {item['advice']}")
    return "\n".join(lines) + "\n"


def _outbox_lines(status: SiteStatus) -> list[str]:
    """Where results go and how long they stay (``[results]``), and what was removed."""
    policy = status.outbox
    if not policy:
        return []
    days = _number(policy.get("keep_days")) or 0.0
    if not policy.get("written", True):
        text = "not written (results.outbox = false: PACS only, kept until every PACS took it)"
    elif days > 0:
        text = f"{policy.get('folder')}, files kept {days:g} days once every PACS took them"
    else:
        text = f"{policy.get('folder')}, files kept for ever (results.keep_days = 0)"
    removed = _mapping(status.recorded.get("removed"))
    if removed:
        last = _mapping(removed.get("last"))
        text += (
            f"; {removed.get('count', '?')} removed, last {_ago(last.get('at'))}: "
            f"{last.get('what')} ({last.get('why')})"
        )
    return [f"outbox        {text}"]


def _follower_lines(rec: Mapping[str, Any]) -> list[str]:
    """The results follower, when it could not start (its last try)."""
    follower = _mapping(rec.get("results_follower"))
    if follower.get("state") != "failed":
        return []
    return [
        f"  the results follower cannot start (last try {_ago(follower.get('at'))}): "
        f"{follower.get('error')}; uploads go on, it is tried again"
    ]


def _upload_process_lines(status: SiteStatus) -> list[str]:
    """The upload process as the gateway records it (nothing before a gateway ran)."""
    process = _mapping(status.gateway.get("upload_process"))
    if not process:
        return []
    if status.gateway_running:
        line = f"upload proc   {process.get('state', '?')} since {_ago(process.get('since'))}"
    else:
        line = "upload proc   not running"
    restarts = _number(process.get("restarts"))
    if restarts:
        line += f", restarted {int(restarts)} time(s)"
    last_exit = _mapping(process.get("last_exit"))
    if last_exit:
        line += f"; last ended {_ago(last_exit.get('at'))}: {_exit_reason(last_exit)}"
    return [line]


class CheckState(IntEnum):
    """The exit status of ``site status --check`` (the Nagios plugins' convention)."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


def check_status(
    status: SiteStatus, max_age: float, *, now: float | None = None
) -> tuple[CheckState, str]:
    """The site's health for monitoring: a state and one line saying why.

    CRITICAL: the gateway is not running; its upload process is restarting, or keeps
    ending; the hub has been unreachable (or refusing the site) for longer than
    ``max_age`` seconds; an instance not held back has waited longer than that; a
    scanner was refused for want of space within that time; a configured certificate
    (the hub's pinned one, the gateway's DICOM TLS one, the scanners' CA) has expired or
    expires within :data:`CERTIFICATE_CRITICAL_DAYS`. WARNING: the upload process ended
    (and was restarted) within that time; the results follower cannot start; instances
    are held back or were given up; a scanner was refused otherwise within that time; a
    certificate expires within :data:`CERTIFICATE_WARNING_DAYS` or cannot be read. The
    line is ``STATE: site NAME: what; what | perfdata``.
    """
    now = time.time() if now is None else now
    rec = status.recorded
    found: list[tuple[CheckState, str]] = []
    if not status.gateway_running:
        found.append((CheckState.CRITICAL, "the gateway is not running"))
    else:
        process = _mapping(status.gateway.get("upload_process"))
        last_exit = _mapping(process.get("last_exit"))
        why = _exit_reason(last_exit)
        failures = _number(process.get("failures")) or 0
        running_for = now - (_number(process.get("since")) or 0.0)
        ended = _number(last_exit.get("at"))
        if process.get("state") == "restarting":
            found.append((CheckState.CRITICAL, f"the upload process is restarting ({why})"))
        elif failures >= 2 and running_for < HEALTHY_RUN:
            found.append(
                (
                    CheckState.CRITICAL,
                    f"the upload process keeps ending ({int(failures)} times in a row; {why})",
                )
            )
        elif ended is not None and now - ended < max_age:
            found.append(
                (
                    CheckState.WARNING,
                    f"the upload process ended {duration(now - ended)} ago ({why}), restarted",
                )
            )
        follower = _mapping(rec.get("results_follower"))
        if follower.get("state") == "failed":
            found.append(
                (
                    CheckState.WARNING,
                    f"the results follower cannot start: {follower.get('error')}",
                )
            )
    hub, since = rec.get("hub"), _number(rec.get("hub_since"))
    if hub in ("unreachable", "refusing") and since is not None and now - since > max_age:
        found.append((CheckState.CRITICAL, f"the hub has been {hub} for {duration(now - since)}"))
    if status.oldest_waiting is not None and now - status.oldest_waiting > max_age:
        found.append(
            (
                CheckState.CRITICAL,
                f"an instance has waited {duration(now - status.oldest_waiting)} for upload",
            )
        )
    if status.held:
        uid, first = min(status.held.items(), key=lambda item: _number(item[1].get("since")) or 0.0)
        reason = str(first.get("reason", "?")).removeprefix(f"{uid}: ")
        found.append(
            (
                CheckState.WARNING,
                f"{len(status.held)} instance(s) held back (oldest: {reason[:160]})",
            )
        )
    if status.given_up:
        found.append(
            (
                CheckState.WARNING,
                f"{status.given_up} instance(s) given up after being held back too long "
                "(site rejected)",
            )
        )
    found.extend(_certificate_problems(status, now))
    if status.hub_key.get("error"):  # nothing from the hub verifies, nothing is sealed
        found.append((CheckState.CRITICAL, f"the hub's key: {status.hub_key['error']}"))
    refusals = _mapping(status.gateway.get("scanner_refusals"))
    last = _number(refusals.get("last"))
    if last is not None and now - last < max_age:
        full = refusals.get("status") == OUT_OF_RESOURCES
        found.append(
            (
                CheckState.CRITICAL if full else CheckState.WARNING,
                f"a scanner was refused {duration(now - last)} ago: {refusals.get('reason')} "
                f"({refusals.get('count', '?')} in all)",
            )
        )
    state = max((s for s, _ in found), default=CheckState.OK)
    if found:
        said = "; ".join(text for s, text in sorted(found, key=lambda f: -f[0]))
    else:
        upload = _number(_mapping(rec.get("last_upload")).get("at"))
        said = f"{status.spool_depth} instance(s) in the spool, hub {hub or 'unknown'}" + (
            f", last upload {duration(now - upload)} ago" if upload is not None else ""
        )
    oldest = now - status.oldest_waiting if status.oldest_waiting is not None else 0.0
    perf = (
        f"spool={status.spool_depth} held={len(status.held)} given_up={status.given_up} "
        f"oldest_waiting={oldest:.0f}s"
    )
    return state, f"{state.name}: site {status.site}: {' '.join(said.split())} | {perf}"
