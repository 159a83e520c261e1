"""Publishing a result to sites: seal it with the hub's key, put it in the results feed.

Used in process by the stages that produce results (processing, review) and by tests.
The service wakes its waiting sites at once when the publishing archive object is its
own, and within ``results_poll_seconds`` when it is another process's.

A result is sealed once, valid :data:`~usreview.envelope.seal.DEFAULT_VALIDITY` (7 days),
to its sites and to the hub itself: the hub keeps no other copy of the plaintext, and
being a recipient of its own envelope lets it seal the same result again. A site that
fetches a result late (a gateway offline for a week) must not get an envelope it can no
longer open, so the service hands results out through :func:`fresh_results` (the feed's
listing) and :func:`open_fresh_result` (``GET /results/{id}``): a result whose envelope
expires within the margin is opened with the hub's key, sealed again with a new validity
window to the current keys of the same sites (and the hub), stored in place of the old
envelope (:meth:`~usreview.store.ResultFeed.replace_envelope`: same cursor, same
metadata, so the site sees one result) and audited (``write``, outcome ``resealed``).
The listing's margin is larger than the fetch's, so a result listed is fetched with the
hash that was listed. A result signed by a hub key that ``usreview hub rotate-key --revoke``
revoked is sealed again the same way whatever its validity: the sites no longer trust that
key. A result the hub cannot open (sealed before the hub was one of its recipients, or not
sealed by the hub) is served as it is stored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, cast

from usreview.envelope import (
    EnvelopeError,
    KeyRing,
    PrivateKeys,
    load_private_keys,
    seal_file,
    unseal,
)
from usreview.envelope.format import MAX_RECIPIENTS, Header, read_header
from usreview.envelope.stream import Source
from usreview.hub.api.sitekeys import SiteKeyFiles
from usreview.hub.audit import AuditAction, AuditLog
from usreview.hub.hubkeys import HubKeys
from usreview.hub.state import HubState
from usreview.store import Archive, CorruptObjectError, InvalidMetadataError, ResultRecord

__all__ = [
    "FETCH_MARGIN",
    "LIST_MARGIN",
    "fresh_results",
    "open_fresh_result",
    "publish_result",
]

#: Seconds of validity a result listed in the feed must have left, or it is sealed again.
LIST_MARGIN = 24 * 3600
#: Seconds of validity a fetched result must have left, or it is sealed again (less than
#: :data:`LIST_MARGIN`: a result just listed is fetched as listed, same hash).
FETCH_MARGIN = 12 * 3600
_ATTEMPTS = 3
_log = logging.getLogger(__name__)


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
    now: float | None = None,
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
    now
        Unix time the envelope's validity starts (default: the clock; tests pass another).

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
    if len(recipients) >= MAX_RECIPIENTS:
        raise InvalidMetadataError(f"sites: a result goes to at most {MAX_RECIPIENTS - 1} sites")
    if key is not None and (known := archive.results.find_result(key)) is not None:
        return known
    hub = load_private_keys(state.hub_key)
    with tempfile.TemporaryDirectory(dir=state.root, prefix=".publish-") as folder:
        envelope = Path(folder) / "result.env"
        # The hub is a recipient too: it seals the result again for a late site.
        seal_file(
            Path(payload), envelope, sender=hub, recipients=[*recipients, hub.public], now=now
        )
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


def fresh_results(
    state: HubState,
    archive: Archive,
    site: str,
    records: Sequence[ResultRecord],
    *,
    hub_keys: HubKeys,
    audit: AuditLog,
    scratch: Path,
    now: float | None = None,
    margin: float = LIST_MARGIN,
) -> list[ResultRecord]:
    """``records`` of ``site``'s feed, each sealed again first if it expires within ``margin``
    seconds of ``now`` (see the module docstring); the records as they are now. A result's
    plaintext passes through ``scratch`` (the service's quarantine, emptied at its start).

    Raises
    ------
    StorageError, AuditError
        A result could not be sealed again (its old envelope stays).
    """
    fresh = []
    for record in records:
        found, stream = _fresh(
            state, hub_keys, archive, site, record.cursor, record, audit, scratch, now, margin
        )
        stream.close()
        fresh.append(found)
    return fresh


def open_fresh_result(
    state: HubState,
    archive: Archive,
    site: str,
    cursor: int,
    *,
    hub_keys: HubKeys,
    audit: AuditLog,
    scratch: Path,
    now: float | None = None,
    margin: float = FETCH_MARGIN,
) -> tuple[ResultRecord, BinaryIO]:
    """Result ``cursor`` of ``site`` and its envelope open for reading, sealed again
    first if it expires within ``margin`` seconds of ``now`` (see the module docstring);
    ``scratch`` as for :func:`fresh_results`.

    Raises
    ------
    NotFoundError
        Missing or addressed to other sites (both answer alike).
    CorruptObjectError
        Its envelope is missing from disk.
    StorageError, AuditError
        It could not be sealed again (its old envelope stays).
    """
    return _fresh(state, hub_keys, archive, site, cursor, None, audit, scratch, now, margin)


def _fresh(
    state: HubState,
    keys: HubKeys,
    archive: Archive,
    site: str,
    cursor: int,
    record: ResultRecord | None,
    audit: AuditLog,
    scratch: Path,
    now: float | None,
    margin: float,
) -> tuple[ResultRecord, BinaryIO]:
    feed = archive.results
    clock = time.time() if now is None else now
    for _ in range(_ATTEMPTS):
        record = record or feed.get_result(site, cursor)
        try:
            stream = feed.open_record(record)
        except FileNotFoundError:  # sealed again meanwhile (another process): read again
            record = None
            continue
        with contextlib.ExitStack() as close_on_error:
            close_on_error.callback(stream.close)
            header = _header(stream)
            if header is None or (
                header.not_after - clock > margin and header.sender_id not in keys.revoked
            ):
                close_on_error.pop_all()
                return record, stream
            resealed = _reseal(
                state, keys, archive, site, record, stream, header, audit, scratch, clock
            )
            if resealed is None:  # the hub cannot open it: as stored
                stream.seek(0)
                close_on_error.pop_all()
                return record, stream
        record = resealed
        try:
            return record, feed.open_record(record)
        except FileNotFoundError:
            record = None
    raise CorruptObjectError(f"result {cursor} is missing from disk")


def _header(stream: BinaryIO) -> Header | None:
    """The envelope's header (``None``: not an envelope, served as stored); ``stream`` is
    left at its start."""
    try:
        header, _ = read_header(stream)
    except EnvelopeError:
        header = None
    stream.seek(0)
    return header


def _reseal(
    state: HubState,
    keys: HubKeys,
    archive: Archive,
    site: str,
    record: ResultRecord,
    stream: BinaryIO,
    header: Header,
    audit: AuditLog,
    scratch: Path,
    now: float,
) -> ResultRecord | None:
    """Seal ``record``'s result again from its envelope read from ``stream``; store it and
    audit it. ``None`` if the hub cannot: it is not a recipient, or no addressee has a key.

    A result sealed before ``usreview hub rotate-key`` opens with the earlier key that
    sealed it and is sealed again with the current one."""
    cursor = record.cursor
    if not {k.key_id for k in keys.opening} & {entry.key_id for entry in header.recipients}:
        _log.warning(
            "result %s expires at %s but cannot be sealed again: the hub is not one of its "
            "recipients (sealed before results were sealed to the hub too)",
            cursor,
            _utc(header.not_after),
        )
        return None
    site_keys = SiteKeyFiles(state.sites)
    sites = archive.results.result_sites(cursor)
    recipients = []
    for name in sites:
        try:
            recipients.append(site_keys.current(name))  # the newest key only, as when published
        except KeyError:
            _log.warning("result %s: site %s has no key any more, not sealed to it", cursor, name)
    if not recipients:
        _log.warning("result %s: none of its sites has a key, it cannot be sealed again", cursor)
        return None
    with tempfile.TemporaryDirectory(dir=scratch, prefix="reseal-") as folder:
        plaintext, envelope = Path(folder) / "result", Path(folder) / "result.env"
        if not _open_own(keys.opening, stream, plaintext, header, cursor):
            return None
        hub = keys.current
        info = seal_file(
            plaintext, envelope, sender=hub, recipients=[*recipients, hub.public], now=now
        )
        plaintext.unlink()
        found, replaced = archive.results.replace_envelope(
            cursor, envelope, replaces=record.envelope_sha256
        )
    if replaced:
        audit.record(
            "usreview",
            AuditAction.WRITE,
            f"results/{cursor}",
            outcome="resealed",
            detail={
                "study": record.study_instance_uid,
                "sites": list(sites),
                "fetched_by": site,
                "expired_at" if header.not_after <= now else "expiring_at": _utc(header.not_after),
                **(
                    {"revoked_key": header.sender_id.hex()}
                    if header.sender_id in keys.revoked
                    else {}
                ),
                "valid_until": _utc(info.not_after),
            },
        )
    return found


def _open_own(
    hub: Sequence[PrivateKeys], stream: BinaryIO, plaintext: Path, header: Header, cursor: int
) -> bool:
    """Open an envelope the hub sealed with one of its keys ``hub`` and stored into
    ``plaintext`` (scratch, no fsync), as of its own start of validity (the archive vouches
    for it); ``False`` if it does not open (not sealed by the hub: served as stored, the
    site refuses it)."""
    try:
        unseal(
            cast(Source, stream),  # a buffered file: it has readinto
            plaintext,
            recipient=hub,
            keyring=KeyRing([keys.public for keys in hub]),
            now=header.not_before,
            durable=False,
        )
    except EnvelopeError as exc:
        _log.error("result %s cannot be sealed again, it does not open: %s", cursor, exc)
        return False
    return True


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
