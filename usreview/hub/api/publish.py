"""Publishing a result to sites: seal it with the hub's key, put it in the results feed.

Used in process by the stages that produce results (processing, review) and by tests.
The service wakes its waiting sites at once when the publishing archive object is its
own, and within ``results_poll_seconds`` when it is another process's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from usreview.envelope import load_private_keys, seal_file
from usreview.hub.api.sitekeys import SiteKeyFiles
from usreview.hub.audit import AuditAction, AuditLog
from usreview.hub.state import HubState
from usreview.store import Archive, InvalidMetadataError, ResultRecord

__all__ = ["publish_result"]


def publish_result(
    state: HubState,
    archive: Archive,
    study_instance_uid: str,
    payload: str | os.PathLike[str],
    *,
    sites: Sequence[str],
    kind: str = "report",
    label: str | None = None,
    supersedes: int | None = None,
    actor: str = "usreview",
    audit: AuditLog | None = None,
    key: str | None = None,
) -> ResultRecord:
    """Seal the file ``payload`` to ``sites`` and publish it; return its feed record.

    Parameters
    ----------
    state
        The hub's state directory (the hub's key, the sites' keys, the audit log).
    archive
        The archive whose results feed gets it.
    study_instance_uid
        The study the result is about.
    payload
        The result's plaintext (a DICOM SR, a derived image, a PDF...).
    sites
        The addressees: each can open it, each feed shows it.
    kind, label, supersedes
        As :meth:`usreview.store.ResultFeed.publish_result`.
    actor
        Who publishes, for the audit log.
    audit
        The audit log; default the state directory's.
    key
        Idempotency key: a result already published under it is returned as it is
        (nothing sealed, published or audited again).

    Raises
    ------
    InvalidMetadataError
        A site without a registered key, or an argument the feed refuses.
    StorageError
        Nothing was published.
    """
    keys = SiteKeyFiles(state.sites)
    names = sorted(set(sites))
    try:
        recipients = [keys.current(name) for name in names]  # the newest key only
    except KeyError as exc:
        raise InvalidMetadataError(
            f"sites: no key is registered for site {exc.args[0]!r}"
        ) from None
    if key is not None and (known := archive.results.find_result(key)) is not None:
        return known
    hub = load_private_keys(state.hub_key)
    with tempfile.TemporaryDirectory(dir=state.root, prefix=".publish-") as folder:
        envelope = Path(folder) / "result.env"
        seal_file(Path(payload), envelope, sender=hub, recipients=recipients)
        record = archive.results.publish_result(
            envelope,
            sites=names,
            study_instance_uid=study_instance_uid,
            kind=kind,
            label=label,
            supersedes=supersedes,
            key=key,
        )
    log = audit or AuditLog(state.audit_log, state.audit_key.read_bytes())
    log.record(
        actor,
        AuditAction.WRITE,
        f"results/{record.cursor}",
        outcome="published",
        detail={"study": study_instance_uid, "sites": names, "kind": kind},
    )
    return record
