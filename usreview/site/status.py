"""What a site is doing: the gateway's status file and ``usreview site status``.

The gateway's upload process (and ``pull``) record events in a :class:`StatusBook`,
which keeps ``STATE/status.json`` up to date (written atomically, at most every half
second); one process writes it at a time (the one holding ``STATE/uploader.lock``, or
``pull``, which holds the gateway's lock). The ``status`` command reads it together with
the spool and the results cursor, so it works while a gateway runs and when none does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usreview.site.config import SiteConfig
from usreview.site.errors import GatewayRunningError, SiteError
from usreview.site.spool import Spool
from usreview.site.studies import InstanceHeader, StudyReport, instance_header, study_reports

__all__ = [
    "SiteStatus",
    "StateLock",
    "StatusBook",
    "format_status",
    "gateway_running",
    "local_time",
    "read_cursor",
    "read_status",
    "read_study_status",
]

STATUS_FILE = "status.json"
CURSOR_FILE = "results.cursor"
LOCK_FILE = "gateway.lock"
UPLOADER_LOCK_FILE = "uploader.lock"
_MAX_ERRORS = 20


class StatusBook:
    """Thread-safe record of uploads, results and errors, mirrored to ``status.json``.

    Parameters
    ----------
    state
        The site's state folder.
    """

    def __init__(self, state: Path, *, min_interval: float = 0.5) -> None:
        self.path = Path(state) / STATUS_FILE
        self._lock = threading.Lock()
        self._min_interval = min_interval
        self._written = 0.0
        self._dirty = False
        self._doc: dict[str, Any] = {"uploads": 0, "results": 0, "errors": []}
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(self.path.read_text())
            if isinstance(old, dict):
                self._doc.update(old)

    def uploaded(self, sop_instance_uid: str, duplicate: bool) -> None:
        """One instance acknowledged by a verified receipt."""
        last = {"sop_instance_uid": sop_instance_uid, "at": time.time(), "duplicate": duplicate}
        self._update("uploads", last_upload=last, hub="ok")

    def result(self, result_id: int, label: str, where: list[str]) -> None:
        """One result delivered."""
        last = {"id": result_id, "label": label, "at": time.time(), "to": where}
        self._update("results", last_result=last, hub="ok")

    def error(
        self, where: str, message: str, *, hub_down: bool = False, advice: str | None = None
    ) -> None:
        """Record an error (the last few are kept), with what to do about it if known."""
        with self._lock:
            errors = list(self._doc.get("errors", []))[-(_MAX_ERRORS - 1) :]
            entry = {"at": time.time(), "where": where, "message": message}
            if advice:
                entry["advice"] = advice
            errors.append(entry)
            self._doc["errors"] = errors
            if hub_down:
                self._doc["hub"] = "unreachable"
            self._dirty = True
        self.flush(force=True)

    def _update(self, counter: str, **values: Any) -> None:
        with self._lock:
            self._doc.update(values)
            self._doc[counter] = int(self._doc.get(counter, 0)) + 1
            self._dirty = True
        self.flush()

    def flush(self, *, force: bool = False) -> None:
        """Write ``status.json`` if something changed (throttled unless ``force``)."""
        with self._lock:
            now = time.monotonic()
            if not self._dirty or (not force and now - self._written < self._min_interval):
                return
            data = json.dumps(self._doc, indent=1).encode()
            self._dirty = False
            self._written = now
            tmp = self.path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
            with contextlib.suppress(OSError):
                tmp.write_bytes(data)
                os.replace(tmp, self.path)


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
    #: Per PACS: deliveries ``pending`` in its queue and ``failed`` (set aside).
    pacs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "site": self.site,
            "hub_url": self.hub_url,
            "gateway_running": self.gateway_running,
            "spool": {
                "depth": self.spool_depth,
                "bytes": self.spool_bytes,
                "oldest": self.oldest_spooled,
                "rejected": self.rejected,
            },
            "results_cursor": self.results_cursor,
            "results_refused": self.results_refused,
            "pacs": {name: dict(counts) for name, counts in self.pacs.items()},
            **dict(self.recorded),
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
    path = Path(state) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_cursor(state: Path) -> int:
    """The last result cursor delivered (0 when none)."""
    try:
        value = json.loads((Path(state) / CURSOR_FILE).read_text())["cursor"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return int(value) if isinstance(value, int) else 0


def read_status(config: SiteConfig) -> SiteStatus:
    """Collect the site's status from its folders (no network)."""
    pending = Spool(config.spool).pending() if config.spool.exists() else []
    rejected = len(Spool(config.spool).rejected()) if config.spool.exists() else 0
    recorded: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((config.state / STATUS_FILE).read_text())
        if isinstance(doc, dict):
            recorded = doc
    pacs = {
        name: {"pending": len(queued), "failed": len(failed)}
        for name, (queued, failed) in _pacs_queues(config).items()
    }
    return SiteStatus(
        site=config.name,
        hub_url=config.hub_url,
        gateway_running=gateway_running(config.state),
        spool_depth=len(pending),
        spool_bytes=sum(item.size for item in pending),
        oldest_spooled=pending[0].spooled_at if pending else None,
        rejected=rejected,
        results_cursor=read_cursor(config.state),
        recorded=recorded,
        results_refused=len(list((config.state / "refused").glob("*.envelope"))),
        pacs=pacs,
    )


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
    from usreview.site.errors import SiteConfigError

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


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def format_status(status: SiteStatus) -> str:
    """The human-readable form printed by ``usreview site status``; what a damaged
    ``status.json`` holds in place of a time or a record is shown as ``?`` or left out."""
    rec = status.recorded
    upload = _mapping(rec.get("last_upload"))
    result = _mapping(rec.get("last_result"))
    lines = [
        f"site          {status.site} -> {status.hub_url}",
        f"gateway       {'running' if status.gateway_running else 'not running'}",
        f"hub           {rec.get('hub', 'unknown')}",
        f"spool         {status.spool_depth} instance(s), {status.spool_bytes / 1e6:.1f} MB"
        + (f", oldest {_ago(status.oldest_spooled)}" if status.oldest_spooled else ""),
        f"rejected      {status.rejected} (see the spool's rejected/ folder)",
        f"uploads       {rec.get('uploads', 0)}, last {_ago(upload.get('at'))}"
        + (f" {upload.get('sop_instance_uid')}" if upload else ""),
        f"results       {rec.get('results', 0)}, last {_ago(result.get('at'))}"
        + (f" #{result.get('id')} {result.get('label')}" if result else "")
        + f" (cursor {status.results_cursor})",
        f"refused       {status.results_refused} result(s) that did not open (state/refused/;"
        " 'site pull --retry-refused' once the keys are fixed)",
    ]
    for name, counts in sorted(status.pacs.items()):
        failed = counts.get("failed", 0)
        lines.append(
            f"pacs {name:<8} {counts.get('pending', 0)} pending, {failed} failed"
            + (f" (state/pacs/{name}/failed/; 'site pacs --retry-failed {name}')" if failed else "")
        )
    recorded = rec.get("errors")
    errors = [_mapping(e) for e in recorded] if isinstance(recorded, list) else []
    lines.append(f"errors        {len(errors)} recorded" + (", latest:" if errors else ""))
    for item in errors[-5:]:
        lines.append(f"  {_ago(item.get('at'))} {item.get('where')}: {item.get('message')}")
        if isinstance(item.get("advice"), str):
            lines.append(f"    -> {item['advice']}")
    return "\n".join(lines) + "\n"
