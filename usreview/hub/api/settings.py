"""The service's settings: traitlets with help, defaults and validation.

Read from ``STATE/service_config.json`` when it exists (the hub-managed service gets
no other environment than the state directory)::

    {"ServiceSettings": {"max_upload_bytes": 4294967296, "processes": 2, "parse_workers": 2}}

``$USREVIEW_DATABASE_URL`` gives the default of :attr:`ServiceSettings.database_url`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import Configurable
from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader

from usreview.hub.errors import StateError

if TYPE_CHECKING:
    from usreview.store import Archive

__all__ = [
    "CONFIG_FILE",
    "DATABASE_URL_ENV",
    "ServiceSettings",
    "check_archive_version",
    "open_archive",
]

CONFIG_FILE = "service_config.json"
#: At most this many service processes unless configured.
MAX_DEFAULT_PROCESSES = 4
DATABASE_URL_ENV = "USREVIEW_DATABASE_URL"


class ServiceSettings(Configurable):  # type: ignore[misc]
    """Limits and resources of the usreview service."""

    max_upload_bytes = Integer(
        2 * 1024**3,
        min=1024,
        help="Largest envelope one upload may send, in bytes (bigger ones answer 413).",
    ).tag(config=True)
    database_url = Unicode(
        help="SQLAlchemy URL of the archive's index (postgresql://...); empty: SQLite "
        f"in STATE/archive. Default ${DATABASE_URL_ENV}.",
    ).tag(config=True)
    processes = Integer(
        min=1,
        max=64,
        help="Service processes answering on the service's port (a supervisor starts them "
        "and starts again one that dies); default: two per core, at most 4. One Python "
        "process runs on about one core, and less while its threads wait for its "
        "interpreter lock; more let many sites' uploads use more. Each has "
        "its own threads and parse_workers; its caches (worklists, reviewers' sites) are "
        "its own, kept a few seconds as for the processing worker's writes, and a result "
        "published by another process reaches a waiting site within results_poll_seconds.",
    ).tag(config=True)
    parse_workers = Integer(
        min=1,
        max=64,
        help="Processes that parse uploaded DICOM, for each service process; default: the "
        "cores shared among the service processes, at least 2 (a file that keeps one busy "
        "until parse_timeout does not hold up that process's other uploads).",
    ).tag(config=True)

    threads = Integer(
        32,
        min=1,
        max=256,
        help="Threads of each service process for blocking work: opening, parsing and "
        "storing uploads, reading the archive. An upload spends most of its time there "
        "waiting (on the parsing workers, the fsync of its object, the index's commit, the "
        "audit log), so more threads than cores let other uploads go on meanwhile and each "
        "commit take several at once.",
    ).tag(config=True)

    @default("processes")
    def _two_per_core(self) -> int:
        return max(1, min(MAX_DEFAULT_PROCESSES, 2 * (os.cpu_count() or 1)))

    @default("parse_workers")
    def _cores_per_process(self) -> int:
        return max(2, (os.cpu_count() or 1) // self.processes)

    parse_timeout = Float(
        60.0, min=1.0, help="Seconds one instance may take to parse before it is refused."
    ).tag(config=True)
    results_poll_seconds = Float(
        0.5,
        min=0.05,
        max=10.0,
        help="How often a waiting results request looks for results published by other "
        "processes (those published in the service wake it at once).",
    ).tag(config=True)
    max_wait_seconds = Float(
        60.0, min=0.0, max=600.0, help="Longest 'wait' a results request may ask for."
    ).tag(config=True)
    claim_minutes = Float(
        20.0,
        min=1.0,
        max=24 * 60.0,
        help="How long a reviewer's claim on a study lasts without renewal, in minutes "
        "(claiming again renews it).",
    ).tag(config=True)
    max_report_bytes = Integer(
        1024**2,
        min=1024,
        max=64 * 1024**2,
        help="Largest report body (JSON) a reviewer may publish, in bytes (bigger: 413).",
    ).tag(config=True)
    header_timeout = Float(
        60.0,
        min=1.0,
        max=3600.0,
        help="Seconds a connection may take to send a request's headers, and may stay "
        "idle between requests, before it is closed.",
    ).tag(config=True)
    max_connections = Integer(
        4096,
        min=16,
        help="Connections each server of a serving process holds at most (the proxy's, "
        "the sites' port's); one more closes the one idle the longest, or itself when "
        "none is idle.",
    ).tag(config=True)
    body_timeout = Float(
        60.0,
        min=1.0,
        max=3600.0,
        help="Seconds the body of a request other than an upload may take to arrive "
        "before the connection is closed.",
    ).tag(config=True)
    body_idle_timeout = Float(
        30.0,
        min=0.2,
        max=3600.0,
        help="Seconds an upload's body may pause (no bytes) before it is answered 408 "
        "and its connection closed.",
    ).tag(config=True)
    min_upload_rate = Integer(
        16 * 1024,
        min=0,
        help="Bytes per second an upload must average once it has run for "
        "body_idle_timeout seconds (slower: 408); 0 checks pauses only.",
    ).tag(config=True)
    refusal_audit_burst = Integer(
        20,
        min=1,
        help="Refusals without a valid token audited line by line per address before the "
        "rest are counted instead (see refusal_audit_per_minute), shared among the service "
        "processes (each at least 1); a known caller's refusals are always audited line "
        "by line.",
    ).tag(config=True)
    refusal_audit_per_minute = Float(
        30.0,
        min=0.0,
        help="Rate at which a caller's refusal allowance refills, per minute; refusals "
        "beyond it are counted and recorded as one summary line per interval.",
    ).tag(config=True)
    unchanged_audit_seconds = Float(
        300.0,
        min=1.0,
        help="A caller re-reading a worklist or study it already holds (answered 304 Not "
        "Modified: an open page asks every few seconds) is audited as one 'unchanged' line "
        "per resource with the count, at least this often, and within min(30 s, this) of its "
        "last re-read; a read that sends data is always audited line by line.",
    ).tag(config=True)
    audit_segment_bytes = Integer(
        256 * 1024**2,
        min=0,
        help="Once the audit log's current file reaches this size (bytes), it is closed as a "
        "read-only segment in STATE/audit/ and a new file continues the chain (0: never; "
        "'usreview hub audit --rotate' does it at any time).",
    ).tag(config=True)
    report_organization = Unicode(
        "usreview hub",
        help="The verifying organization named in published reports (DICOM SR).",
    ).tag(config=True)

    @validate("report_organization")
    def _check_organization(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"]).strip()
        if not value or len(value) > 64:
            raise TraitError("report_organization must be 1 to 64 characters")
        return value

    @default("database_url")
    def _database_url_default(self) -> str:
        return os.environ.get(DATABASE_URL_ENV, "")

    @classmethod
    def from_state(cls, root: Path) -> ServiceSettings:
        """The settings of ``root/service_config.json``, or the defaults.

        Raises
        ------
        StateError
            If the file is not JSON or a setting is invalid (the message names it).
        """
        path = Path(root) / CONFIG_FILE
        try:
            config = JSONFileConfigLoader(CONFIG_FILE, path=str(root)).load_config()
        except ConfigFileNotFound:
            return cls()
        except ValueError as exc:
            raise StateError(f"{path} is not valid JSON ({exc}): fix or remove it") from None
        try:
            return cls(config=config)
        except TraitError as exc:
            raise StateError(f"{path}: invalid ServiceSettings value ({exc})") from None


def open_archive(root: Path, settings: ServiceSettings | None = None) -> Archive:
    """The archive of the state directory ``root``, on the database of its ``settings``.

    ``settings`` default to :meth:`ServiceSettings.from_state`.
    """
    from usreview.store import Archive

    settings = settings or ServiceSettings.from_state(root)
    return Archive.open(settings.database_url or None, root / "archive")


def check_archive_version(root: Path, settings: ServiceSettings | None = None) -> None:
    """Refuse, before the hub starts anything, an archive a newer usreview upgraded.

    Only reads: an archive not made yet, or a database that cannot be reached now, is
    left to the service to open (and report).

    Raises
    ------
    SchemaVersionError
        The archive's index records a newer schema (see :mod:`usreview.store.migrate`).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from usreview.store.database import default_url, make_engine
    from usreview.store.migrate import check_version

    settings = settings or ServiceSettings.from_state(root)
    archive = root / "archive"
    if not settings.database_url and not (archive / "index.sqlite3").exists():
        return
    engine = make_engine(settings.database_url or default_url(archive))
    try:
        check_version(engine)
    except SQLAlchemyError:
        pass  # the service says what is wrong with the database
    finally:
        engine.dispose()
