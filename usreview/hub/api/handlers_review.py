"""What reviewers read: ``GET /studies``, ``GET /studies/{uid}``, ``GET /instances/{uid}``.

An instance is stored as the site's envelope; reading it opens the envelope with the
hub's key into the quarantine folder, checks the plaintext against the hash recorded
at ingest, streams it, and removes it. The read is audited before any byte leaves.
A caller without the review scope gets the 404 of a missing study or instance.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from pathlib import Path
from typing import Any, cast

from usreview.envelope import KeyRing, unseal
from usreview.envelope.format import read_header
from usreview.envelope.stream import Source
from usreview.hub.api.base import BaseHandler, check_uid
from usreview.hub.api.errors import ApiError, not_found
from usreview.hub.api.views import instance_view, study_view
from usreview.hub.audit import AuditAction
from usreview.store import CorruptObjectError, InstanceRecord, Reviewer, StudyStatus

__all__ = ["StudiesHandler", "StudyHandler", "open_instance", "send_instance"]

_CHUNK = 1024 * 1024


class StudiesHandler(BaseHandler):
    """``GET /studies?site=&status=``: studies the reviewer may read, newest first."""

    async def get(self) -> None:
        """List studies."""
        reviewer = self.reviewer()
        site = self.get_query_argument("site", None)
        status = self.get_query_argument("status", None)
        if status is not None and status not in {s.value for s in StudyStatus}:
            choices = ", ".join(s.value for s in StudyStatus)
            raise ApiError(400, "bad_request", f"status must be one of {choices}")
        studies = await self.blocking(self.context.archive.list_studies, reviewer, status=status)
        found = [study_view(s) for s in reversed(studies) if site is None or s.site == site]
        await self.audit(AuditAction.READ, detail={"count": len(found), "site": site})
        self.write_json({"studies": found})


class StudyHandler(BaseHandler):
    """``GET /studies/{uid}``: one study, its series and instances, its status history."""

    async def get(self, study_instance_uid: str) -> None:
        """Describe one study."""
        reviewer = self.reviewer(hide=("study", study_instance_uid))
        archive = self.context.archive
        study = await self.blocking(archive.study, reviewer, study_instance_uid)
        instances = await self.blocking(
            archive.list_instances, reviewer, study_instance_uid=study_instance_uid
        )
        history = await self.blocking(archive.history, reviewer, study_instance_uid)
        series: dict[str, list[dict[str, Any]]] = {}
        for record in instances:
            series.setdefault(record.series_instance_uid, []).append(instance_view(record))
        await self.audit(AuditAction.READ, detail={"site": study.site})
        self.write_json(
            {
                **study_view(study),
                "series": [
                    {"series_instance_uid": uid, "instances": items}
                    for uid, items in series.items()
                ],
                "history": [
                    {
                        "status": change.status.value,
                        "previous": change.previous.value if change.previous else None,
                        "at": change.at.isoformat(),
                        "reason": change.reason,
                        "actor": change.actor,
                    }
                    for change in history
                ],
            }
        )


def open_instance(handler: BaseHandler, reviewer: Reviewer, record: InstanceRecord) -> Path:
    """Open the stored envelope of ``record`` into a new quarantine file; return its path.

    Raises
    ------
    CorruptObjectError
        The envelope does not open or its plaintext is not what was stored.
    """
    context = handler.context
    out = context.ingestor.quarantine_dir / f"{secrets.token_hex(16)}.read"
    try:
        ring = KeyRing([context.site_keys[record.site]])
    except KeyError:
        raise CorruptObjectError(f"site {record.site} has no key to open its instances") from None
    with context.archive.open_envelope(reviewer, record.sop_instance_uid) as src:
        header, _ = read_header(src)
        src.seek(0)
        # The archive vouches that it was valid when stored: open it as of then.
        try:
            unseal(
                cast(Source, src),  # a buffered file: it has readinto
                out,
                recipient=context.ingestor.hub_keys,
                keyring=ring,
                now=header.not_before,
            )
        except Exception as exc:
            raise CorruptObjectError(
                f"the stored envelope of {record.sop_instance_uid} does not open ({exc})"
            ) from exc
    with open(out, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != record.plaintext_sha256:
        out.unlink()
        raise CorruptObjectError(f"the stored instance {record.sop_instance_uid} has changed")
    return out


async def send_instance(handler: BaseHandler, sop_instance_uid: str) -> None:
    """Answer ``GET /instances/{uid}`` on ``handler``: the plaintext DICOM."""
    hide = ("instance", sop_instance_uid)
    reviewer = handler.reviewer(hide=hide)
    if not check_uid(sop_instance_uid):
        raise not_found(*hide)
    record = await handler.blocking(handler.context.archive.get, reviewer, sop_instance_uid)
    path = await handler.blocking(open_instance, handler, reviewer, record)
    try:
        await handler.audit(
            AuditAction.READ,
            detail={"site": record.site, "study": record.study_instance_uid, "size": record.size},
        )
        handler.set_header("Content-Type", "application/dicom")
        handler.set_header("Content-Length", str(record.size))
        handler.set_header(
            "Content-Disposition", f'attachment; filename="{record.sop_instance_uid}.dcm"'
        )
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                handler.write(chunk)
                await handler.flush()
        handler.finish()
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
