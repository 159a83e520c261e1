"""Envelopes held in ``ARCHIVE/orphans/``: list them, or ingest them again.

The service's start (:meth:`usreview.store.Archive.recover`) moves each archive object
that no index row names (an index restored older than the objects) to
``ARCHIVE/orphans/``, never deleting it: the sites may hold receipts for them.
:func:`list_orphans` names each by site and instance; :func:`reingest_orphans` puts
them back through the upload's own ingest (``usreview hub orphans [--reingest]``).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from usreview.hub.commands import audit_admin
from usreview.hub.state import HubState, existing_state

if TYPE_CHECKING:
    from usreview.envelope import KeyRing
    from usreview.hub.api.settings import ServiceSettings
    from usreview.ingest import WorkerPool
    from usreview.store import Archive
    from usreview.store.orphans import HeldOrphan

__all__ = ["REINGEST_ACTOR", "Orphan", "list_orphans", "reingest_orphans"]


#: Who ``usreview hub orphans --reingest`` is in the audit log.
REINGEST_ACTOR = "usreview hub orphans --reingest"


@dataclass(frozen=True)
class Orphan:
    """An envelope held in ``ARCHIVE/orphans/`` and, after :func:`reingest_orphans`, what
    became of it.

    ``site`` signed it (found by its key); ``sop_instance_uid`` is the instance inside once
    it opens and parses, else ``reason`` says why not. ``outcome``: ``held`` (listed),
    ``stored``, ``duplicate`` (that content was stored already), ``conflict`` (kept aside
    as conflict ``conflict_id``, as an upload's 409), all three released from
    ``orphans/``; or ``kept``: it stays held, ``reason`` says why.
    """

    key: str
    size: int
    site: str | None = None
    sop_instance_uid: str | None = None
    reason: str | None = None
    outcome: str = "held"
    conflict_id: int | None = None


def list_orphans(state: Path) -> list[Orphan]:
    """The envelopes held in the archive's ``orphans/``, each named by site and instance
    (audited as a read). Works with the hub running or stopped.

    Each is opened as :func:`reingest_orphans` opens it and parsed in a resource-limited
    worker; nothing is stored or released.
    """
    from usreview.hub.audit import AuditAction, AuditLog

    hub_state = existing_state(state)
    with _orphan_tools(hub_state) as tools:
        found = [tools.identify(orphan) for orphan in tools.held()]
    AuditLog(hub_state.audit_log, hub_state.audit_key.read_bytes()).record(
        "usreview hub orphans", AuditAction.READ, "orphans", outcome="listed",
        detail={"count": len(found)},
    )  # fmt: skip
    return found


def reingest_orphans(state: Path, progress: Callable[[Orphan], None] | None = None) -> list[Orphan]:
    """Put each envelope held in ``ARCHIVE/orphans/`` back through the upload's ingest.

    The same :meth:`~usreview.ingest.Ingestor.ingest` as the service's ``PUT`` (opened
    with the hub's key, parsed in a resource-limited worker, stored, committed), for the
    registered site whose key signed it. Unlike an upload it is opened with every key
    that site has had, as of the envelope's own start of validity, and without the
    replay cache: the archive held it, so it was verified when it arrived (as stored
    envelopes are read, :mod:`usreview.hub.api.plaintext`). Idempotent by SOP Instance
    UID: the same content already stored is a duplicate, other content is kept aside as
    a conflict. Each outcome is one audit line, written after the commit and before the
    held copy is removed (:func:`~usreview.store.orphans.release_orphan`); one that does
    not open, parse or store stays held (``kept``, with its reason). ``progress`` is
    called with each result. Works with the hub running or stopped: a service starting
    meanwhile waits for the envelope in hand (:func:`~usreview.store.orphans.recovery_lock`).

    Raises
    ------
    AuditError
        The audit log cannot be written: the run stops, the envelope in hand stays held.
    StorageError
        The archive cannot be opened.
    """
    hub_state = existing_state(state)
    done = []
    with _orphan_tools(hub_state) as tools:
        for orphan in tools.held():
            done.append(tools.reingest(orphan))
            if progress is not None:
                progress(done[-1])
    return done


@contextlib.contextmanager
def _orphan_tools(state: HubState) -> Iterator[_OrphanTools]:
    from usreview.hub.api.settings import ServiceSettings, open_archive

    settings = ServiceSettings.from_state(state.root)
    with open_archive(state.root, settings) as archive:
        tools = _OrphanTools(state, archive, settings)
        try:
            yield tools
        finally:
            tools.close()


class _OrphanTools:
    """What listing and re-ingesting orphans share: the archive, the keys, a parsing
    worker and a private quarantine folder (both made when first needed)."""

    def __init__(self, state: HubState, archive: Archive, settings: ServiceSettings) -> None:
        from usreview.hub.api.sitekeys import SiteKeyFiles
        from usreview.hub.hubkeys import load_hub_keys

        self.state, self.archive, self.settings = state, archive, settings
        self.hub_keys = load_hub_keys(state)
        self.site_keys = SiteKeyFiles(state.sites)
        self._pool: WorkerPool | None = None
        self._quarantine: Path | None = None

    def held(self) -> list[HeldOrphan]:
        from usreview.store.orphans import held_orphans

        return held_orphans(self.archive)

    @property
    def pool(self) -> WorkerPool:
        from usreview.ingest import WorkerPool

        if self._pool is None:
            self._pool = WorkerPool(1, timeout=self.settings.parse_timeout)
        return self._pool

    @property
    def quarantine(self) -> Path:
        """A folder of its own in ``STATE/quarantine`` (emptied, as the rest, at a start)."""
        if self._quarantine is None:
            parent = self.state.root / "quarantine"
            parent.mkdir(mode=0o700, exist_ok=True)
            self._quarantine = Path(tempfile.mkdtemp(prefix="orphans-", dir=parent))
        return self._quarantine

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._quarantine is not None:
            shutil.rmtree(self._quarantine, ignore_errors=True)

    def sender(self, orphan: HeldOrphan) -> tuple[str, KeyRing, float]:
        """The registered site whose key signed ``orphan``, the keys it has had, and the
        envelope's start of validity (the moment it is opened as of)."""
        from usreview.envelope import EnvelopeError
        from usreview.envelope.format import read_header
        from usreview.ingest import RefusedEnvelopeError, UnknownSiteError

        try:
            with orphan.path.open("rb") as f:
                header, _ = read_header(f)
        except EnvelopeError as exc:
            raise RefusedEnvelopeError(f"envelope refused: {exc}") from exc
        for site in self.site_keys:
            with contextlib.suppress(KeyError):
                ring = self.site_keys.stored_ring(site)
                if ring.get(header.sender_id) is not None:
                    return site, ring, float(header.not_before)
        raise UnknownSiteError(
            f"signed with key {header.sender_id.hex()[:16]}, which no registered site has "
            "had: register the site's key ('usreview hub add-site'), then run this again"
        )

    def identify(self, orphan: HeldOrphan) -> Orphan:
        """``orphan`` named by site and SOP Instance UID, or with the reason it is not."""
        from usreview.envelope import EnvelopeError, unseal
        from usreview.envelope.stream import Source
        from usreview.ingest import IngestError

        shown = Orphan(orphan.key, orphan.size)
        try:
            site, ring, when = self.sender(orphan)
            shown = replace(shown, site=site)
            out = self.quarantine / f"{secrets.token_hex(16)}.dcm"
            try:
                with orphan.path.open("rb") as src:
                    source = cast(Source, src)  # a buffered file: it has readinto
                    unseal(source, out, recipient=self.hub_keys.opening, keyring=ring, now=when,
                           durable=False)  # fmt: skip
                return replace(shown, sop_instance_uid=self.pool.parse(out).sop_instance_uid)
            finally:
                out.unlink(missing_ok=True)
        except (EnvelopeError, IngestError, OSError) as exc:
            return replace(shown, reason=_why(exc))

    def reingest(self, orphan: HeldOrphan) -> Orphan:
        """Ingest ``orphan`` again and release it once committed (see :func:`reingest_orphans`)."""
        from usreview.ingest import IngestError, Ingestor
        from usreview.store import ConflictError, StoreError
        from usreview.store.orphans import recovery_lock, release_orphan

        shown = Orphan(orphan.key, orphan.size, outcome="kept")
        try:
            site, ring, when = self.sender(orphan)
            shown = replace(shown, site=site)
            ingestor = Ingestor(
                self.archive,
                self.hub_keys.current,
                {site: ring},
                None,  # no replay cache: the archive held it (see reingest_orphans)
                self.pool,
                self.quarantine,
                earlier_hub_keys=self.hub_keys.previous,
                clock=lambda: when,
            )
            with recovery_lock(self.archive.root):
                try:
                    result = ingestor.ingest(site, orphan.path)
                except ConflictError as exc:
                    kept = self.archive.conflict(exc.conflict_id).object_key
                    shown = replace(
                        shown,
                        sop_instance_uid=exc.sop_instance_uid,
                        outcome="conflict",
                        conflict_id=exc.conflict_id,
                        reason=exc.reason,
                    )
                    self._audit(shown, {"conflict": exc.conflict_id})
                else:
                    record, kept = result.record, result.record.object_key
                    shown = replace(
                        shown,
                        sop_instance_uid=record.sop_instance_uid,
                        outcome="duplicate" if result.duplicate else "stored",
                    )
                    self._audit(
                        shown,
                        {
                            "study": record.study_instance_uid,
                            "plaintext_sha256": record.plaintext_sha256,
                            "size": record.size,
                            "message_id": result.message_id.hex(),
                        },
                    )
                release_orphan(self.archive, orphan.key, kept_as=kept)
        except (IngestError, StoreError, OSError) as exc:
            shown = replace(shown, outcome="kept", conflict_id=None, reason=_why(exc))
            self._audit(shown, {})
        return shown

    def _audit(self, shown: Orphan, detail: dict[str, Any]) -> None:
        uid = shown.sop_instance_uid
        resource = f"instances/{uid}" if uid else f"orphans/{shown.key}"
        said = {"key": shown.key, "site": shown.site, "sop_instance_uid": uid}
        if shown.reason:
            said["reason"] = shown.reason
        audit_admin(self.state, REINGEST_ACTOR, resource, shown.outcome, {**said, **detail})


def _why(exc: BaseException) -> str:
    """One line for an orphan that does not open, parse or store."""
    from usreview.envelope import EnvelopeError

    if isinstance(exc, EnvelopeError):
        return f"envelope refused: {exc}"
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return str(exc)
