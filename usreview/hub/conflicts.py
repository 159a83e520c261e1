"""Envelopes kept aside as conflicts, for administrators: list, export, resolve.

A site that sends other content under a SOP Instance UID the hub already stores (or a
UID that another site or study holds) is answered 409, and the hub keeps its envelope
aside (``ARCHIVE/conflicts/``), never overwriting what it stored. ``usreview hub
conflicts`` lists them; ``--export ID --to DIR`` writes the kept instance, and the
stored one under the same UID if there is one, as DICOM files to compare; ``--resolve
ID --note TEXT`` records what the administrator decided (the envelope stays kept). Each
of these is audited, exports as ``export``. Works with the hub running or stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from usreview.hub.api.settings import open_archive
from usreview.hub.audit import AuditAction, AuditLog
from usreview.hub.state import HubState, existing_state
from usreview.store import ConflictRecord, NotFoundError, Reviewer

__all__ = ["ACTOR", "ExportedConflict", "export_conflict", "list_conflicts", "resolve_conflict"]

#: Who these commands are in the audit log.
ACTOR = "usreview hub conflicts"


@dataclass(frozen=True)
class ExportedConflict:
    """What :func:`export_conflict` wrote: the kept instance, and the stored one if any."""

    conflict: ConflictRecord
    kept: Path
    stored: Path | None


def list_conflicts(state: Path, *, every: bool = False) -> list[ConflictRecord]:
    """The unresolved conflicts (``every``: resolved ones too), oldest first (audited)."""
    hub_state = existing_state(state)
    with open_archive(hub_state.root) as archive:
        found = archive.list_conflicts(unresolved_only=not every)
    _audit(hub_state, AuditAction.READ, "conflicts", "listed", {"count": len(found)})
    return found


def export_conflict(state: Path, conflict_id: int, folder: Path) -> ExportedConflict:
    """Write conflict ``conflict_id``'s instance into ``folder`` as ``conflict-ID.dcm``.

    The instance stored under the same SOP Instance UID, if any, is written beside it as
    ``stored-ID.dcm``. Both are opened from their envelopes and checked against the
    hashes recorded when they arrived; each file is new (mode 0600), never overwritten.

    Raises
    ------
    NotFoundError
        No such conflict.
    CorruptObjectError
        An envelope is missing, does not open or has changed.
    FileExistsError
        A file of that name is in ``folder`` already.
    """
    from usreview.hub.api.plaintext import open_kept, open_stored
    from usreview.hub.api.sitekeys import SiteKeyFiles
    from usreview.hub.hubkeys import load_hub_keys

    hub_state = existing_state(state)
    hub_keys = load_hub_keys(hub_state).opening
    site_keys = SiteKeyFiles(hub_state.sites)
    kept, stored = folder / f"conflict-{conflict_id}.dcm", None
    with open_archive(hub_state.root) as archive:
        conflict = archive.conflict(conflict_id)  # a missing one leaves no folder behind
        folder.mkdir(parents=True, exist_ok=True)
        # Audited before any plaintext is written, as the service audits a read.
        _audit(hub_state, AuditAction.EXPORT, f"conflicts/{conflict_id}", "allowed",
               {"site": conflict.site, "sop_instance_uid": conflict.sop_instance_uid,
                "file": str(kept)})  # fmt: skip
        with archive.open_conflict(conflict_id) as src:
            open_kept(
                src,
                kept,
                site=conflict.site,
                plaintext_sha256=conflict.plaintext_sha256,
                what=f"conflict {conflict_id}",
                hub_keys=hub_keys,
                site_keys=site_keys,
                durable=True,
            )
        admin = Reviewer(ACTOR)
        try:
            record = archive.get(admin, conflict.sop_instance_uid)
        except NotFoundError:
            record = None
        if record is not None:
            stored = folder / f"stored-{conflict_id}.dcm"
            _audit(hub_state, AuditAction.EXPORT, f"instances/{record.sop_instance_uid}",
                   "allowed", {"site": record.site, "study": record.study_instance_uid,
                                "conflict": conflict_id, "file": str(stored)})  # fmt: skip
            open_stored(
                archive, admin, record, stored, hub_keys=hub_keys, site_keys=site_keys, durable=True
            )
    return ExportedConflict(conflict, kept, stored)


def resolve_conflict(state: Path, conflict_id: int, note: str) -> ConflictRecord:
    """Mark conflict ``conflict_id`` resolved with the administrator's ``note`` (audited).

    Raises
    ------
    NotFoundError
        No such conflict.
    InputError
        An empty note.
    """
    from usreview.errors import InputError

    if not note.strip():
        raise InputError("say what was decided: --note TEXT")
    hub_state = existing_state(state)
    with open_archive(hub_state.root) as archive:
        resolved = archive.resolve_conflict(conflict_id, note.strip())
    _audit(hub_state, AuditAction.ADMIN, f"conflicts/{conflict_id}", "resolved",
           {"site": resolved.site, "sop_instance_uid": resolved.sop_instance_uid,
            "note": resolved.resolution})  # fmt: skip
    return resolved


def _audit(
    state: HubState, action: AuditAction, resource: str, outcome: str, detail: dict[str, object]
) -> None:
    AuditLog(state.audit_log, state.audit_key.read_bytes()).record(
        ACTOR, action, resource, outcome=outcome, detail=detail
    )
