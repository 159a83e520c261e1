"""Ingest one upload: open the site's envelope, parse the instance, store, sign a receipt.

The HTTP service calls :meth:`Ingestor.ingest` with the uploading site (authenticated by
the service) and the envelope it received, saved to a file. In order:

1. open the envelope into a quarantine: it must be signed by a key registered for that
   site and addressed to the hub (:class:`WrongSenderError`, :class:`NotForHubError`,
   other failures :class:`RefusedEnvelopeError`). An envelope held in memory (a small
   upload) is opened into memory too (:func:`os.memfd_create`: the plaintext never
   reaches a disk, and no file is created and removed per upload, which on a busy
   file system costs more CPU than the rest of the step); an envelope file into a
   quarantine file;
2. hash the plaintext and parse it in the resource-limited :class:`WorkerPool`
   (:class:`RejectedInstanceError`; a memory plaintext is passed by file descriptor);
   when the caller names the SOP Instance UID it expects (the HTTP path), a different
   one is refused (:class:`UidMismatchError`);
3. store the *original envelope* (encrypted at rest) with its metadata; the archive
   returns only after its durable commit;
4. drop the plaintext, whatever happened (the quarantine folder is emptied of
   leftovers when an :class:`Ingestor` starts: put it on tmpfs or an encrypted volume);
5. return the record and a signed receipt.

Replay and idempotency. Idempotency by SOP Instance UID is what protects the archive:
the same plaintext again is a duplicate success (with a fresh receipt), different bytes
under a stored UID raise the store's :class:`~usreview.store.ConflictError` (HTTP 409).
A site that re-sends the *same envelope* after a lost acknowledgement must get its
receipt again, so the replay cache is never consulted before storing: a message id is
recorded only after the durable commit, and a message seen before is answered as a
duplicate while the archive still holds its instance. Only an envelope whose instance
is no longer held is refused as replayed (:class:`ReplayedEnvelopeError`), so that an
old envelope cannot bring back something removed. Without a replay cache, idempotency
alone applies.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from usreview import _memfile
from usreview.envelope import (
    EnvelopeError,
    EnvelopeInfo,
    KeyRing,
    NotARecipientError,
    PrivateKeys,
    PublicKeys,
    ReplayCache,
    ReplayedError,
    UntrustedSenderError,
    unseal,
)
from usreview.ingest.errors import (
    NotForHubError,
    RefusedEnvelopeError,
    ReplayedEnvelopeError,
    UidMismatchError,
    UnknownSiteError,
    WrongSenderError,
)
from usreview.ingest.receipts import SignedReceipt, sign_batch_receipt, sign_instance_receipt
from usreview.ingest.worker import ParsedInstance, WorkerPool
from usreview.store import Archive, InstanceMetadata, InstanceRecord, NotFoundError, PutResult
from usreview.store.records import validate_site

__all__ = ["IngestResult", "Ingestor", "SiteKeys"]

#: The keys of each site: one key, a ring per site, or one ring whose key names are sites.
SiteKeys = Mapping[str, PublicKeys | KeyRing] | KeyRing
_SUFFIX = ".dcm"


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What an accepted upload gives back to the site."""

    record: InstanceRecord
    duplicate: bool
    receipt: SignedReceipt
    message_id: bytes
    parsed: ParsedInstance


class Ingestor:
    """The hub's ingest stage, independent of the transport.

    Parameters
    ----------
    archive
        Where envelopes are stored.
    hub_keys
        The hub's private keys: receipts are signed with them, envelopes opened.
    earlier_hub_keys
        The keys the hub had before (newest first, :mod:`usreview.hub.hubkeys`): they
        open what a site sealed before it adopted the current key.
    site_keys
        The keys each site may sign with: ``{site: PublicKeys}``, ``{site: KeyRing}``
        (rotation, revocation), or one :class:`KeyRing` whose keys are named after sites.
    replay_cache
        Message ids stored so far (see the module docstring), or ``None``.
    pool
        The parsing workers.
    quarantine_dir
        Private folder (created with mode 0700) for plaintexts while they are checked;
        dedicated to one ingesting process: leftovers are removed on start.
    clock
        Unix time, for the envelopes' validity windows (tests pass a fixed one).
    """

    def __init__(
        self,
        archive: Archive,
        hub_keys: PrivateKeys,
        site_keys: SiteKeys,
        replay_cache: ReplayCache | None,
        pool: WorkerPool,
        quarantine_dir: str | os.PathLike[str],
        *,
        earlier_hub_keys: Sequence[PrivateKeys] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.archive = archive
        self.hub_keys = hub_keys
        self.opening_keys: tuple[PrivateKeys, ...] = (hub_keys, *earlier_hub_keys)
        """Every key of the hub an envelope may be addressed to, current first."""
        self.site_keys = site_keys
        self.replay_cache = replay_cache
        self.pool = pool
        self.quarantine_dir = Path(quarantine_dir)
        self._clock = clock
        self.quarantine_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = self.quarantine_dir.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            os.chmod(self.quarantine_dir, 0o700)
        self.purge_quarantine()

    def use_hub_keys(
        self, hub_keys: PrivateKeys, earlier_hub_keys: Sequence[PrivateKeys] = ()
    ) -> None:
        """Sign with ``hub_keys`` from now on, and open with them and ``earlier_hub_keys``
        (a rotation of the running hub's key)."""
        self.opening_keys = (hub_keys, *earlier_hub_keys)  # first: the new key opens at once
        self.hub_keys = hub_keys

    def purge_quarantine(self) -> int:
        """Remove every file left in the quarantine folder (by a crash); return how many."""
        removed = 0
        for entry in self.quarantine_dir.iterdir():
            if entry.is_file() or entry.is_symlink():
                _remove(entry)
                removed += 1
        return removed

    def ingest(
        self,
        site: str,
        envelope_path: str | os.PathLike[str] | bytes,
        *,
        expected_sop_instance_uid: str | None = None,
    ) -> IngestResult:
        """Accept the envelope at ``envelope_path`` (or these bytes) uploaded by ``site``.

        Returns only once the envelope is durably stored (or found already stored).
        With ``expected_sop_instance_uid``, an instance with another UID is refused
        before anything is stored. An envelope passed as bytes is stored from memory
        (the HTTP service does so for small uploads, which then never touch its spool).

        Raises
        ------
        RefusedEnvelopeError
            :class:`UnknownSiteError`, :class:`WrongSenderError`, :class:`NotForHubError`,
            :class:`ReplayedEnvelopeError`, or the envelope is altered, truncated,
            expired, ... (the envelope error is the ``__cause__``). HTTP 4xx.
        RejectedInstanceError
            The plaintext is not an acceptable ultrasound instance (``reason``). HTTP 422.
        UidMismatchError
            Its SOP Instance UID is not ``expected_sop_instance_uid``. HTTP 400.
        ConflictError
            Different content under a stored SOP Instance UID. HTTP 409.
        InvalidMetadataError
            ``site`` is not a valid site name.
        StorageError, WorkerPoolError
            The hub failed; nothing was acknowledged. HTTP 5xx, send again.
        """
        validate_site(site)
        ring = self._ring_for(site)
        envelope = (
            bytes(envelope_path)
            if isinstance(envelope_path, bytes | bytearray | memoryview)
            else Path(envelope_path)
        )
        with self._quarantine(in_memory=isinstance(envelope, bytes)) as plaintext:
            info = self._open(site, envelope, plaintext, ring)
            digest, size = _digest(plaintext)
            parsed = self.pool.parse(
                plaintext if isinstance(plaintext, Path) else plaintext.fileno()
            )
            expected = expected_sop_instance_uid
            if expected is not None and parsed.sop_instance_uid != expected:
                raise UidMismatchError(
                    f"the instance's SOP Instance UID is {parsed.sop_instance_uid}, not "
                    f"{expected}; upload it under its own UID"
                )
            metadata = parsed.metadata(plaintext_sha256=digest, size=size)
            result = self._store(site, envelope, metadata, info)
        receipt = sign_instance_receipt(self.hub_keys, result.record, message_id=info.message_id)
        return IngestResult(result.record, result.duplicate, receipt, info.message_id, parsed)

    def batch_receipt(
        self, site: str, *, sop_instance_uids: list[str] | None = None
    ) -> SignedReceipt:
        """A signed list of the instances the hub durably holds for ``site``."""
        return sign_batch_receipt(
            self.hub_keys, site, self.archive.receipts(site, sop_instance_uids=sop_instance_uids)
        )

    # -- steps -------------------------------------------------------------------------

    def _ring_for(self, site: str) -> KeyRing:
        if isinstance(self.site_keys, KeyRing):
            ring = KeyRing()
            for entry in self.site_keys:
                if entry.public.name == site:
                    ring.add(entry.public, entry.state)
        else:
            found = self.site_keys.get(site)
            ring = KeyRing([found]) if isinstance(found, PublicKeys) else (found or KeyRing())
        if not len(ring):
            raise UnknownSiteError(
                f"no key is registered for site {site!r}; an administrator must add its "
                "public key before it can upload"
            )
        return ring

    @contextlib.contextmanager
    def _quarantine(self, *, in_memory: bool) -> Iterator[Path | io.BufferedRandom]:
        """Where a plaintext is opened: a memory file, or a name in the quarantine folder.

        Either is gone when the block ends, whatever happened.
        """
        if in_memory and _memfile.AVAILABLE:  # elsewhere every plaintext goes to quarantine
            with _memfile.memory_file() as f:
                yield f
            return
        path = self.quarantine_dir / f"{secrets.token_hex(16)}{_SUFFIX}"
        try:
            yield path
        finally:
            _remove(path)

    def _open(
        self, site: str, envelope: Path | bytes, out: Path | BinaryIO, ring: KeyRing
    ) -> EnvelopeInfo:
        try:
            # The plaintext is hashed, parsed and deleted within this call; what is
            # acknowledged is the envelope, stored durably by the archive. So the
            # quarantine file needs no fsync (a crash leaves at most a file that the
            # next start purges, and nothing acknowledged depends on it).
            with (
                io.BytesIO(envelope) if isinstance(envelope, bytes) else open(envelope, "rb")
            ) as source:
                return unseal(
                    source,
                    out,
                    recipient=self.opening_keys,
                    keyring=ring,
                    now=self._clock(),
                    durable=False,
                )
        except UntrustedSenderError as exc:
            raise WrongSenderError(
                f"the envelope is not signed by a key registered for site {site!r}; "
                "seal it with this site's own key"
            ) from exc
        except NotARecipientError as exc:
            hub = self.hub_keys.key_id.hex()[:16]
            raise NotForHubError(
                f"the envelope is not addressed to the hub's key {hub}; "
                "seal it to the hub's public key"
            ) from exc
        except EnvelopeError as exc:
            raise RefusedEnvelopeError(f"envelope refused: {exc}") from exc

    def _store(
        self, site: str, envelope: Path | bytes, metadata: InstanceMetadata, info: EnvelopeInfo
    ) -> PutResult:
        cache = self.replay_cache
        if cache is not None:
            try:
                cache.check(info.sender_id, info.message_id)
            except ReplayedError as exc:
                try:
                    record = self.archive.get(site, metadata.sop_instance_uid)
                except NotFoundError:
                    raise ReplayedEnvelopeError(
                        f"envelope {info.message_id.hex()} was accepted before and its "
                        "instance is no longer held; seal the instance again to resend it"
                    ) from exc
                if record.plaintext_sha256 == metadata.plaintext_sha256:
                    return PutResult(record, duplicate=True)
        result = self.archive.put(site, envelope, metadata)
        if cache is not None:
            with contextlib.suppress(ReplayedError):  # a concurrent upload of the same one
                cache.record(info.sender_id, info.message_id, info.not_after, self._clock())
        return result


def _digest(plaintext: Path | io.BufferedIOBase) -> tuple[str, int]:
    """SHA-256 (hex) and size of the plaintext, a file or an open (memory) file."""
    if isinstance(plaintext, Path):
        with open(plaintext, "rb") as f:
            return _digest(f)
    plaintext.seek(0)
    return hashlib.file_digest(plaintext, "sha256").hexdigest(), plaintext.tell()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
