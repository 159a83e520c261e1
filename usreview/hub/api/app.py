"""Wiring the API: the service's resources at startup, and the URL table.

:func:`open_context` (once, before serving) takes the state directory's service lock
(a second service on the same state refuses to start, after waiting up to
:data:`LOCK_WAIT_SECONDS` for one that is stopping), starts the parsing
:class:`~usreview.ingest.WorkerPool` without waiting for it (its workers import while
the rest starts; an upload that arrives first waits for its worker), opens the archive
(SQLite in ``STATE/archive``, or ``database_url``), recovers it and its results feed
after a crash, moves aside teaching-case folders left without their case
(:func:`~usreview.store.teaching.remove_orphan_cases`, logged and audited), empties the
spool and quarantine folders, and builds the :class:`~usreview.ingest.Ingestor` with the
hub's keys and the registered sites' keys. All of it is done before the service serves,
so no upload is accepted before the archive is recovered.

Several service processes (``ServiceSettings.processes``): the supervising process
calls :func:`recover_shared_state` (the lock, the archive's recovery, emptied folders,
the audited start) and each serving process then :func:`open_context` with its
:class:`ServiceWorker`, which keeps the inherited lock and only empties its own spool
and quarantine subfolders. :func:`api_routes` gives the
handlers for :func:`usreview.hub.service.make_app`, and :func:`unknown_path_route` the
audited 404 of every other path.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usreview.envelope import ReplayCache
from usreview.hub.api.access import ReviewerSites
from usreview.hub.api.handlers_claims import ClaimHandler
from usreview.hub.api.handlers_receipts import (
    BatchReceiptHandler,
    HubKeysHandler,
    ReceiptHandler,
)
from usreview.hub.api.handlers_reports import ReportsHandler
from usreview.hub.api.handlers_results import ResultHandler, ResultsHandler
from usreview.hub.api.handlers_review import (
    AnalysisHandler,
    FrameHandler,
    PriorsHandler,
    StudiesHandler,
    StudyHandler,
)
from usreview.hub.api.handlers_service import UnknownPathHandler, WhoamiHandler
from usreview.hub.api.handlers_teaching import (
    TeachingCaseHandler,
    TeachingCasesHandler,
    TeachingInstanceHandler,
)
from usreview.hub.api.handlers_upload import InstanceHandler
from usreview.hub.api.settings import ServiceSettings, open_archive
from usreview.hub.api.sitekeys import SiteKeyFiles
from usreview.hub.api.worklist_cache import WorklistCache
from usreview.hub.audit import (
    AuditAction,
    AuditLog,
    RefusalLimiter,
    RereadCounter,
    UnchangedReads,
)
from usreview.hub.errors import StateError
from usreview.hub.hubkeys import HubKeys, LiveHubKeys
from usreview.hub.state import HubState, open_state, state_from_env
from usreview.ingest import Ingestor, WorkerPool
from usreview.store import Archive
from usreview.store.teaching import remove_orphan_cases

__all__ = ["ServiceContext", "api_routes", "open_context", "unknown_path_route"]

_log = logging.getLogger("usreview.service")
#: In the state directory: its modification time says when a worklist last changed.
WORKLIST_MARKER = "worklist.changed"


@dataclass
class ServiceContext:
    """Everything the handlers share; built by :func:`open_context`."""

    state: HubState
    settings: ServiceSettings
    archive: Archive
    pool: WorkerPool
    ingestor: Ingestor
    site_keys: SiteKeyFiles
    audit: AuditLog
    spool: Path
    executor: ThreadPoolExecutor
    lock_fd: int
    live_keys: LiveHubKeys
    worklist: WorklistCache = field(default_factory=WorklistCache)
    reviewers: ReviewerSites = field(default_factory=ReviewerSites)
    refusals: RefusalLimiter = field(default_factory=RefusalLimiter)
    rereads: RereadCounter = field(default_factory=RereadCounter)

    @property
    def hub_keys(self) -> HubKeys:
        """The hub's keys now (:meth:`refresh_hub_keys`)."""
        return self.refresh_hub_keys()

    def refresh_hub_keys(self) -> HubKeys:
        """The hub's keys, read again if its key was rotated since; the ingestor then signs
        and opens with them too. Handlers call it before each request."""
        keys = self.live_keys.get()
        if keys.current is not self.ingestor.hub_keys:
            self.ingestor.use_hub_keys(keys.current, keys.previous)
        return keys

    def record_suppressed(self, counts: dict[str, int]) -> None:
        """Record one ``suppressed`` line per caller of ``counts`` (:meth:`RefusalLimiter.drain`).

        Called now and then by the service, off the event loop. Raises
        :class:`~usreview.hub.errors.AuditError` if the log cannot be written.
        """
        for caller, count in sorted(counts.items()):
            anonymous = caller.startswith("ip:")  # names cannot hold ':'
            actor = "anonymous" if anonymous else caller
            detail = {"ip": caller[3:]} if anonymous else {}
            self.audit.record(
                actor, AuditAction.DENIAL, "refusals", outcome="suppressed",
                detail={**detail, "count": count},
            )  # fmt: skip

    def record_unchanged(self, reads: list[UnchangedReads]) -> None:
        """Record one ``unchanged`` line per caller and resource of ``reads``
        (:meth:`RereadCounter.drain`); called as :meth:`record_suppressed` is."""
        for item in reads:
            self.audit.record(
                item.actor, AuditAction.READ, item.resource, outcome="unchanged",
                detail=item.detail(),
            )  # fmt: skip

    def close(self) -> None:
        """Finish work in flight, stop the workers, close the archive, release the lock."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.pool.close()
        self.archive.close()
        os.close(self.lock_fd)


@dataclass(frozen=True)
class ServiceWorker:
    """One of several service processes (``ServiceSettings.processes`` > 1).

    The supervising process holds the state directory's lock (``lock_fd``, inherited)
    and has recovered the shared state (:func:`recover_shared_state`); the worker keeps
    its own spool and quarantine subfolders.
    """

    index: int
    lock_fd: int

    @property
    def folder(self) -> str:
        """The name of its spool and quarantine subfolders."""
        return f"worker-{self.index}"


def open_context(
    state_root: Path | None = None,
    settings: ServiceSettings | None = None,
    *,
    worker: ServiceWorker | None = None,
) -> ServiceContext:
    """Open the service's resources (see the module docstring).

    With ``worker``, the lock and the shared state's recovery are the supervisor's
    (:func:`recover_shared_state`): only this process's own folders are emptied.

    Raises
    ------
    StateError
        Another service holds the state directory, or it is unusable.
    StorageError
        The archive cannot be opened or recovered.
    """
    state = open_state(state_root if state_root is not None else state_from_env())
    settings = settings or ServiceSettings.from_state(state.root)
    lock_fd = _lock(state.root / "service.lock") if worker is None else worker.lock_fd
    with contextlib.ExitStack() as undo:  # on failure: close what was opened, unlock
        undo.callback(os.close, lock_fd)
        pool = WorkerPool(settings.parse_workers, timeout=settings.parse_timeout)
        undo.callback(pool.close)
        archive = open_archive(state.root, settings)
        undo.callback(archive.close)
        if worker is None:
            detail = _recover(state, archive)
            spool, quarantine = _spool(state), _quarantine(state)
        else:
            # Only its own folders: the other processes' hold uploads in flight.
            detail = {"worker": worker.index}
            spool = _empty(_own_folder(state.root / "spool", worker))
            quarantine = _own_folder(state.root / "quarantine", worker)  # the ingest empties it
        site_keys = SiteKeyFiles(state.sites)
        live_keys = LiveHubKeys(state)
        hub_keys = live_keys.get()
        ingestor = Ingestor(
            archive,
            hub_keys.current,
            site_keys.uploads,  # replaced keys only within their grace period
            ReplayCache(state.root / "replay.sqlite3"),
            pool,
            quarantine,
            earlier_hub_keys=hub_keys.previous,  # uploads sealed before a site adopted it
        )
        audit = AuditLog(
            state.audit_log,
            state.audit_key.read_bytes(),
            segment_bytes=settings.audit_segment_bytes or None,
        )
        audit.record(
            "usreview",
            AuditAction.ADMIN,
            "service",
            outcome="started",
            detail={"pid": os.getpid(), **detail},
        )
        undo.pop_all()  # opened: the context owns them now
    executor = ThreadPoolExecutor(settings.threads, thread_name_prefix="usreview")
    # The allowance is the service's: each of several processes has its share.
    share = 1 if worker is None else settings.processes
    refusals = RefusalLimiter(
        max(1.0, settings.refusal_audit_burst / share),
        settings.refusal_audit_per_minute / share,
    )
    rereads = RereadCounter(span=settings.unchanged_audit_seconds)
    # Claims, releases and reports drop every process's cached worklists.
    worklist = WorklistCache(marker=state.root / WORKLIST_MARKER)
    return ServiceContext(
        state, settings, archive, pool, ingestor, site_keys, audit, spool, executor, lock_fd,
        live_keys, worklist=worklist, refusals=refusals, rereads=rereads,
    )  # fmt: skip


def recover_shared_state(
    state_root: Path | None = None, settings: ServiceSettings | None = None
) -> int:
    """For a supervisor of service processes: lock, recover, audit; return the lock's fd.

    What :func:`open_context` does before serving, but for every process it will start:
    the archive is opened, recovered and closed again, the spool and quarantine folders
    (the workers' included) are emptied, and the start is audited. Closing the returned
    descriptor (in every process that inherited it) releases the state directory.
    """
    state = open_state(state_root if state_root is not None else state_from_env())
    settings = settings or ServiceSettings.from_state(state.root)
    lock_fd = _lock(state.root / "service.lock")
    with contextlib.ExitStack() as undo:
        undo.callback(os.close, lock_fd)
        with open_archive(state.root, settings) as archive:
            detail = _recover(state, archive)
        _quarantine(state)
        _spool(state)
        AuditLog(state.audit_log, state.audit_key.read_bytes()).record(
            "usreview",
            AuditAction.ADMIN,
            "service",
            outcome="started",
            detail={"pid": os.getpid(), "processes": settings.processes, **detail},
        )
        undo.pop_all()
    return lock_fd


def _recover(state: HubState, archive: Archive) -> dict[str, Any]:
    """Recover the archive, its results and teaching cases after a crash; what was done."""
    report = archive.recover()
    results = archive.results.recover()
    teaching_held = remove_orphan_cases(archive)
    if teaching_held:
        _log.warning(
            "moved %d teaching-case folder(s) without their case to teaching/orphans/: %s",
            len(teaching_held),
            ", ".join(teaching_held),
        )
    return {
        "orphans_held": len(report.orphans),
        "temp_files_removed": report.temp_files_removed,
        "missing": list(report.missing),
        "results_temp_files_removed": results.temp_files_removed,
        "results_orphans_held": len(results.orphans),
        "teaching_orphans_held": list(teaching_held),
    }


def _spool(state: HubState) -> Path:
    """The uploads' spool folder, emptied (workers' subfolders included)."""
    return _empty(_private_folder(state.root / "spool"))


def _quarantine(state: HubState) -> Path:
    """The plaintexts' quarantine folder, emptied (workers' subfolders included)."""
    return _empty(_private_folder(state.root / "quarantine"))


def _own_folder(parent: Path, worker: ServiceWorker) -> Path:
    """A serving process's subfolder of ``parent`` (both private)."""
    return _private_folder(_private_folder(parent) / worker.folder)


def _empty(folder: Path) -> Path:
    """Remove the files a crash left in ``folder`` and in its subfolders."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            _empty(entry)
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
    return folder


def api_routes(prefix: str, context: ServiceContext, options: dict[str, Any]) -> list[Any]:
    """The API's ``(pattern, handler, options)`` under ``{prefix}api/v1/``."""
    api = f"{prefix}api/v1"
    kwargs = {**options, "context": context}
    uid = r"([^/]+)"
    return [
        (rf"{api}/whoami/?", WhoamiHandler, kwargs),
        (rf"{api}/instances/{uid}/receipt/?", ReceiptHandler, kwargs),
        (rf"{api}/instances/{uid}/analysis/?", AnalysisHandler, kwargs),
        (rf"{api}/instances/{uid}/frames/([0-9]{{1,6}})/?", FrameHandler, kwargs),
        (rf"{api}/instances/{uid}/?", InstanceHandler, kwargs),
        (rf"{api}/receipts/?", BatchReceiptHandler, kwargs),
        (rf"{api}/hub-keys/?", HubKeysHandler, kwargs),
        (rf"{api}/results/?", ResultsHandler, kwargs),
        (rf"{api}/results/{uid}/?", ResultHandler, kwargs),
        (rf"{api}/studies/?", StudiesHandler, kwargs),
        (rf"{api}/studies/{uid}/claim/?", ClaimHandler, kwargs),
        (rf"{api}/studies/{uid}/reports/?", ReportsHandler, kwargs),
        (rf"{api}/studies/{uid}/priors/?", PriorsHandler, kwargs),
        (rf"{api}/studies/{uid}/?", StudyHandler, kwargs),
        (rf"{api}/teaching/?", TeachingCasesHandler, kwargs),
        (rf"{api}/teaching/{uid}/instances/{uid}/?", TeachingInstanceHandler, kwargs),
        (rf"{api}/teaching/{uid}/?", TeachingCaseHandler, kwargs),
    ]


def unknown_path_route(
    prefix: str, context: ServiceContext, options: dict[str, Any]
) -> tuple[str, type[UnknownPathHandler], dict[str, Any]]:
    """The last route: every other path under ``prefix`` answers the audited JSON 404."""
    return (rf"{prefix}(.*)", UnknownPathHandler, {**options, "context": context})


def _private_folder(path: Path) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


#: How long a starting service waits for the previous one (still finishing) to let go.
LOCK_WAIT_SECONDS = 30.0


def _lock(path: Path, wait: float = LOCK_WAIT_SECONDS) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:  # a restart: the old service is finishing
                time.sleep(0.2)
                continue
            holder = os.pread(fd, 32, 0).strip()  # the pid it wrote
            os.close(fd)
            named = f" (pid {holder.decode()})" if holder.isdigit() else ""
            raise StateError(
                f"another usreview service{named} is using {path.parent}: stop it first"
            ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
