"""Sealing spooled instances to the hub and uploading them, in the background.

:func:`upload_instance` seals one instance with the site's key to the hub's key, PUTs it
and checks the answer's receipt: signed by the hub's key, for this site, naming the
instance's UID and the SHA-256 of the bytes sent. Only then may the instance leave the
spool. :class:`Uploader` runs that for everything in the spool with a few worker threads,
woken as soon as an instance is offered (the gateway's upload process offers the names
the SCP sends it); while the hub is unreachable (or refuses the token) it waits with
exponential backoff and loses nothing. Only an instance the hub refuses for good (not
DICOM, not ultrasound, corrupt pixel data, an invalid header, a UID conflict:
:func:`~usreview.site.refusals.classify_refusal`) moves to the spool's ``rejected/``.
Other refusals keep the instance in the spool: one about the site (its clock ahead of
the hub's, a stale hub key) makes every upload wait with the backoff; one about this
instance (too large for the hub, a decoder missing there, hub-side trouble) holds that
instance back with its own backoff while the others go on. So does a problem with one
instance at the site (its spool file unreadable, an unexpected failure while preparing
it): only the hub being down or refusing the site pauses every upload. An instance held
back for ``upload.give_up_after_hours`` (24 h by default) is given up: moved to
``rejected/`` with the reason, where ``usreview site rejected --requeue`` finds it once
the cause is fixed. The status records each refusal with advice where it is clear, and
each instance held back with why, how many tries, and since when.
:meth:`Uploader.reconcile` removes from the spool, without sending them again, the
instances the hub's signed batch receipts say it already holds (asking only about the
UIDs in the spool, a hundred at a time).
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from queue import Queue
from typing import IO, Any

from usreview.envelope import PrivateKeys, PublicKeys, seal
from usreview.ingest.errors import InvalidReceiptError
from usreview.ingest.receipts import verify_receipt
from usreview.site.backoff import Backoff
from usreview.site.client import RECEIPT_BATCH, HubClient
from usreview.site.config import SiteConfig
from usreview.site.errors import (
    HubRefusedError,
    HubRequestError,
    ReceiptError,
    SpoolError,
    SpoolKeyError,
)
from usreview.site.hubkeys import REFRESH_SECONDS, changed_hub_keys
from usreview.site.refusals import Refusal
from usreview.site.spool import Spool, SpooledInstance
from usreview.site.status import GIVEN_UP, StatusBook, duration
from usreview.site.studies import InstanceHeader, StudyLog, instance_header

__all__ = ["UploadOutcome", "Uploader", "held_instances", "upload_instance"]

_log = logging.getLogger(__name__)
_IN_MEMORY = 64 << 20
_RESCAN = 5.0
#: Least cap of an instance's own backoff (seconds): an instance the hub refused for
#: itself (too large, a decoder missing) is not sent again more often than this once its
#: delays have grown, whatever ``upload.backoff_max``.
_HELD_MAX = 300.0
_UNREADABLE = (
    "the spool file cannot be read at the site: check its owner, its permissions and the "
    "disk (kernel log); it is tried again by itself"
)


@dataclass(frozen=True)
class UploadOutcome:
    """An instance the hub durably holds, with its verified receipt body."""

    sop_instance_uid: str
    sha256: str
    duplicate: bool
    receipt: Mapping[str, Any]


def upload_instance(
    client: HubClient,
    *,
    site: str,
    site_keys: PrivateKeys,
    hub_key: PublicKeys,
    sop_instance_uid: str,
    data: bytes,
    sha256: str,
    now: float | None = None,
    trusted_hub_keys: Sequence[PublicKeys] = (),
) -> UploadOutcome:
    """Seal ``data`` to the hub, upload it, verify the receipt.

    ``now`` is the time the envelope is sealed at (default: the clock). The receipt
    verifies with ``hub_key`` or one of ``trusted_hub_keys`` (the hub's earlier keys).

    Raises
    ------
    HubUnreachableError, HubRefusedError
        The upload failed (see :mod:`usreview.site.client`).
    ReceiptError
        The receipt does not verify with the hub's key or names other bytes.
    """
    with _sink(len(data)) as sink:
        seal(io.BytesIO(data), sink, sender=site_keys, recipients=[hub_key], now=now)
        size = sink.tell()
        answer = client.put_instance(sop_instance_uid, sink, size)
    try:
        body = verify_receipt(answer.get("receipt", {}), [hub_key, *trusted_hub_keys], site=site)
    except InvalidReceiptError as exc:
        raise ReceiptError(f"{sop_instance_uid}: the hub's receipt was refused: {exc}") from None
    named = body.get("plaintext_sha256", body.get("sha256"))
    if body.get("sop_instance_uid") != sop_instance_uid or named != sha256:
        raise ReceiptError(
            f"{sop_instance_uid}: the hub's receipt names other bytes "
            f"({body.get('sop_instance_uid')}, sha256 {str(named)[:16]}...); kept in the spool"
        )
    return UploadOutcome(sop_instance_uid, sha256, bool(answer.get("duplicate")), body)


def held_instances(
    answer: Mapping[str, Any], hub_keys: Sequence[PublicKeys], site: str
) -> list[tuple[str, str]]:
    """The (SOP Instance UID, plaintext SHA-256) pairs a batch receipt names, once it
    verifies with one of ``hub_keys`` as the hub's receipt for ``site`` (``GET receipts``).

    Raises
    ------
    ReceiptError
        The receipt does not verify, or is not a batch receipt.
    """
    try:
        body = verify_receipt(answer, hub_keys, site=site)
    except InvalidReceiptError as exc:
        raise ReceiptError(f"the hub's batch receipt was refused: {exc}") from None
    instances = body.get("instances")
    if body.get("kind") != "batch" or not isinstance(instances, list):
        raise ReceiptError("the hub's batch receipt lists no instances")
    pairs = []
    for entry in instances:
        if isinstance(entry, Mapping):
            uid, sha = entry.get("sop_instance_uid"), entry.get("plaintext_sha256")
            if isinstance(uid, str) and isinstance(sha, str):
                pairs.append((uid, sha))
    return pairs


@dataclass
class _Held:
    """An instance held back: when it is offered again, its own backoff, since when (Unix
    time, kept across restarts in the status file) and how many tries."""

    next_at: float
    since: float
    tries: int
    backoff: Backoff = field(repr=False)


def _sink(size: int) -> IO[bytes]:
    if size < _IN_MEMORY:
        return io.BytesIO()
    return tempfile.TemporaryFile()  # the caller closes it


class Uploader:
    """Upload what is in the spool with ``workers`` threads until stopped.

    Parameters
    ----------
    config
        The site's configuration.
    spool
        The spool to empty; the uploader registers as its listener.
    status
        Where uploads and errors are recorded.
    workers
        Concurrent uploads.
    client_factory
        Makes one :class:`HubClient` per worker (default: from ``config``).
    clock
        The site's clock, Unix time (default :func:`time.time`): envelopes are sealed at it.
    studies
        The per-study journal acknowledgements and rejections are recorded in (default:
        the state folder's).
    """

    def __init__(
        self,
        config: SiteConfig,
        spool: Spool,
        status: StatusBook,
        *,
        workers: int = 2,
        client_factory: Callable[[], HubClient] | None = None,
        clock: Callable[[], float] = time.time,
        studies: StudyLog | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.status = status
        self.studies = studies if studies is not None else StudyLog(config.state)
        self.workers = workers
        self._client_factory = client_factory or (lambda: HubClient(config))
        self._site_keys = config.load_private_keys()
        self._hub_keys = config.load_hub_keys()  # the last is current
        # Without a results follower, the uploads ask for the hub's next certificate.
        self._next_trust_refresh = math.inf if config.follow_results else 0.0
        self._clock = clock
        self._backoff = Backoff(config.backoff_initial, config.backoff_max)
        # Instances held back (refused for themselves, unreadable): file name -> their
        # next try (monotonic time) and backoff; not offered before that time.
        self._waiting: dict[str, _Held] = {}
        self._queue: Queue[SpooledInstance | None] = Queue()
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._resume_at = 0.0
        self._threads: list[threading.Thread] = []
        spool.add_listener(lambda item: self._offer([item]))

    def start(self) -> None:
        """Start the dispatcher and the workers."""
        self._threads = [threading.Thread(target=self._dispatch, name="upload-dispatch")]
        self._threads += [
            threading.Thread(target=self._work, name=f"upload-{i}") for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def wake(self) -> None:
        """Look at the spool now."""
        self._wake.set()

    def offer(self, items: Iterable[SpooledInstance]) -> None:
        """Queue ``items`` for upload (those already queued or in progress are skipped)."""
        self._offer(list(items))

    def reconcile(self) -> int:
        """Remove what the hub already holds from the spool; return how many left it.

        Asks the hub for signed batch receipts about the UIDs in the spool (in batches
        of :data:`~usreview.site.client.RECEIPT_BATCH`), when the spool is not empty; an
        instance leaves the spool when a receipt names its UID and its SHA-256, as after
        an upload. Meant for start-up, before :meth:`start`: after a crash between the
        hub's receipt and the spool's removal.

        Raises
        ------
        HubUnreachableError, HubRefusedError
            The hub could not be asked (nothing left the spool).
        ReceiptError
            A batch receipt does not verify (nothing left the spool).
        """
        pending = self.spool.pending()
        if not pending:
            return 0
        uids = sorted({item.sop_instance_uid for item in pending})
        held: dict[str, set[str]] = {}
        client = self._client_factory()
        try:
            for start in range(0, len(uids), RECEIPT_BATCH):
                answer = client.receipts(uids[start : start + RECEIPT_BATCH])
                try:
                    pairs = held_instances(answer, self._hub_keys, self.config.name)
                except ReceiptError:
                    if not self._adopt_hub_keys(client):
                        raise
                    pairs = held_instances(answer, self._hub_keys, self.config.name)
                for uid, sha in pairs:
                    held.setdefault(uid, set()).add(sha)
        finally:
            client.close()
        removed = 0
        for item in pending:
            named = held.get(item.sop_instance_uid, set())
            if item.sha256 not in named:
                continue
            header = self._header_of(item)  # (a batch receipt names no study)
            if self.spool.acknowledge(item, item.sha256):
                self.status.uploaded(item.sop_instance_uid, duplicate=True)
                self.studies.acknowledged(
                    item.sop_instance_uid,
                    None,
                    header,
                    spooled_at=item.spooled_at,
                    duplicate=True,
                )
                removed += 1
        self.studies.flush()
        return removed

    def _header_of(self, item: SpooledInstance) -> InstanceHeader:
        """The journal's part of ``item``'s header; empty if it cannot be read now."""
        try:
            data = self.spool.read(item)
        except (SpoolError, OSError):
            return InstanceHeader()
        return instance_header(data) if data is not None else InstanceHeader()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the uploads in progress (what is left stays in the spool)."""
        self._stop.set()
        self._wake.set()
        for _ in range(self.workers):
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self.studies.flush()

    # -- threads ---------------------------------------------------------------------

    def _offer(self, items: list[SpooledInstance]) -> None:
        now = time.monotonic()
        with self._lock:
            fresh = [
                item
                for item in items
                if item.path.name not in self._inflight and self._due(item.path.name, now)
            ]
            self._inflight.update(item.path.name for item in fresh)
        for item in fresh:
            self._queue.put(item)

    def _due(self, name: str, now: float) -> bool:
        """Whether the instance spooled as ``name`` may be tried now (holds the lock)."""
        held = self._waiting.get(name)
        return held is None or held.next_at <= now

    def _dispatch(self) -> None:
        # New instances come straight from the spool's listener; the folder is scanned
        # at start, after each pause, every few seconds (for what failed or was missed)
        # and when an instance held back is due. Oldest first: an instance held back is
        # skipped until then, so it never stands in front of the others.
        while not self._stop.is_set():
            pause = self._resume_at - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)
                continue
            self._refresh_hub_trust_now()
            try:
                pending = self.spool.pending()
            except OSError as exc:
                self.status.error("spool", str(exc))
            else:
                with self._lock:  # forget what left the spool otherwise
                    names = {item.path.name for item in pending}
                    for name in [name for name in self._waiting if name not in names]:
                        del self._waiting[name]
                self.status.keep_held({item.sop_instance_uid for item in pending})
                self._offer(pending)
            self._wake.wait(self._next_scan())
            self._wake.clear()

    def _refresh_hub_trust_now(self) -> None:
        """For a site without a results follower (``results.follow = false``): ask the hub
        for its keys and its next TLS certificate every :data:`REFRESH_SECONDS` (the
        follower does so otherwise), so that the hub's switch does not cut the uploads."""
        if time.monotonic() < self._next_trust_refresh:
            return
        self._next_trust_refresh = time.monotonic() + REFRESH_SECONDS
        client = self._client_factory()
        try:
            keys = changed_hub_keys(self.config, client, self._hub_keys)
        finally:
            client.close()
        if keys is not None:
            self._hub_keys = keys

    def _next_scan(self) -> float:
        """Seconds until the next scan: sooner when an instance held back is due."""
        now = time.monotonic()
        with self._lock:
            due = min(
                (held.next_at for held in self._waiting.values() if held.next_at > now),
                default=now + _RESCAN,
            )
        return min(_RESCAN, max(0.05, due - now))

    def _work(self) -> None:
        client = self._client_factory()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                try:
                    if not self._stop.is_set():
                        self._wait_for_resume()
                        self._upload(client, item)
                except Exception as exc:  # a bug must not end the worker: hold the instance
                    _log.exception("upload of %s failed", item.sop_instance_uid)
                    self._hold_safely(item, exc)
                finally:
                    with self._lock:
                        self._inflight.discard(item.path.name)
        finally:
            client.close()

    def _wait_for_resume(self) -> None:
        while not self._stop.is_set():
            pause = self._resume_at - time.monotonic()
            if pause <= 0:
                return
            self._stop.wait(pause)

    def _adopt_hub_keys(self, client: HubClient) -> bool:
        """After a receipt by a key the site does not know: follow the hub's signed key
        transitions (:mod:`usreview.site.hubkeys`); whether a new key is trusted now."""
        keys = changed_hub_keys(self.config, client, self._hub_keys)
        if keys is None:
            return False
        self._hub_keys = keys
        return True

    def _upload(self, client: HubClient, item: SpooledInstance, *, adopted: bool = False) -> None:
        if self._stop.is_set():
            return
        uid = item.sop_instance_uid
        try:
            data = self.spool.read(item)  # opened if sealed, its hash checked
        except SpoolKeyError as exc:  # sealed with a key not configured: keep it, go on
            self._hold(
                item,
                str(exc),
                "list the spool key that sealed it in folders.retired_spool_keys and restart",
                key="spool key",
            )
            return
        except SpoolError as exc:
            self._release(item)
            self.spool.reject(item, str(exc))
            self.studies.rejected(uid, InstanceHeader(), str(exc), spooled_at=item.spooled_at)
            self.status.error("spool", str(exc))
            return
        except OSError as exc:  # this file, now (permissions, a bad sector): the others go on
            self._hold(
                item,
                f"{uid}: its spool file cannot be read ({exc.strerror or exc})",
                _UNREADABLE,
                key=f"unreadable {exc.errno}",
            )
            return
        if data is None:
            return  # acknowledged meanwhile (the same bytes received again)
        try:
            outcome = upload_instance(
                client,
                site=self.config.name,
                site_keys=self._site_keys,
                hub_key=self._hub_keys[-1],
                sop_instance_uid=uid,
                data=data,
                sha256=item.sha256,
                now=self._clock(),
                trusted_hub_keys=self._hub_keys[:-1],
            )
        except HubRefusedError as exc:
            self._refused(item, exc, data)
        except ReceiptError as exc:
            if not adopted and self._adopt_hub_keys(client):
                self._upload(client, item, adopted=True)  # sealed to the new key; the
                return  # hub answers a duplicate with a receipt by it
            self._failed(str(exc), hub_down=True)
        except HubRequestError as exc:
            self._failed(str(exc), hub_down=True)
        else:
            self._backoff.reset()
            self._release(item)
            self.spool.acknowledge(item, outcome.sha256)
            self.status.uploaded(uid, outcome.duplicate)
            study = outcome.receipt.get("study_instance_uid")
            self.studies.acknowledged(
                uid,
                study if isinstance(study, str) else None,
                instance_header(data),
                spooled_at=item.spooled_at,
                duplicate=outcome.duplicate,
            )

    def _refused(self, item: SpooledInstance, exc: HubRefusedError, data: bytes | None) -> None:
        """Reject ``item`` if the refusal is final, else keep it and try again later."""
        uid = item.sop_instance_uid
        refusal = exc.refusal
        if refusal is Refusal.FINAL:
            self._release(item)
            self.spool.reject(item, str(exc))
            header = instance_header(data) if data is not None else InstanceHeader()
            self.studies.rejected(uid, header, str(exc), spooled_at=item.spooled_at)
            self.status.error("upload", f"{uid} rejected: {exc}")
            return
        advice = exc.advice(
            transfer_syntax=_transfer_syntax(data) if data is not None else None,
            hub_key_file=self.config.hub_public_key,
        )
        if refusal is Refusal.SITE:
            self._failed(f"{uid}: {exc}; kept in the spool", hub_down=False, advice=advice)
            return
        key = f"refused {exc.status} {exc.code} {exc.reason or ''}".rstrip()
        self._hold(item, f"{uid}: {exc}", advice, key=key, data=data)

    def _hold(
        self,
        item: SpooledInstance,
        message: str,
        advice: str | None,
        *,
        key: str,
        data: bytes | None = None,
    ) -> None:
        """Keep ``item`` in the spool and try it again after its own backoff; the others
        go on meanwhile. Held for ``upload.give_up_after_hours`` since its first refusal
        (recorded in the status file, so a restart does not reset it), it is given up."""
        uid = item.sop_instance_uid
        now = time.time()
        limit = self.config.give_up_after_hours * 3600.0
        with self._lock:
            name = item.path.name
            held = self._waiting.get(name)
            if held is None:
                since, tries = self.status.held_since(uid) or (now, 0)
                cap = max(self.config.backoff_max, _HELD_MAX)
                held = _Held(0.0, since, tries, Backoff(self.config.backoff_initial, cap))
                self._waiting[name] = held
            held.tries += 1
            give_up = limit > 0 and now - held.since >= limit
            delay = 0.0 if give_up else held.backoff.next_delay()
            held.next_at = time.monotonic() + delay
        if give_up:
            self._give_up(item, message, held, data)
            return
        self._wake.set()  # the dispatcher goes on with the others
        self.status.held(
            uid,
            reason=message,
            advice=advice,
            tries=held.tries,
            since=held.since,
            next_try=now + delay,
        )
        message = f"{message}; kept in the spool (next try of it in {delay:.1f} s)"
        _log.warning("upload: %s", message)
        self.status.error("upload", message, advice=advice, key=key)

    def _hold_safely(self, item: SpooledInstance, exc: Exception) -> None:
        """:meth:`_hold` after an unexpected failure, which must not end the worker."""
        kind = f"unexpected {type(exc).__name__}"
        try:
            self._hold(item, f"{item.sop_instance_uid}: {kind}: {exc}", None, key=kind)
        except Exception:
            _log.exception("holding %s back failed", item.sop_instance_uid)

    def _give_up(
        self, item: SpooledInstance, message: str, held: _Held, data: bytes | None
    ) -> None:
        """Stop trying ``item``: to ``rejected/`` with why, for ``site rejected``."""
        uid = item.sop_instance_uid
        held_for = duration(time.time() - held.since)
        why = message.removeprefix(f"{uid}: ")
        reason = f"{GIVEN_UP} {held_for} and {held.tries} tries: {why}"
        self._release(item)
        self.spool.reject(item, reason)
        header = instance_header(data) if data is not None else self._header_of(item)
        self.studies.rejected(uid, header, reason, spooled_at=item.spooled_at)
        self.status.given_up(uid, reason)
        _log.error("upload: %s: %s; moved to rejected/", uid, reason)
        self.status.error(
            "upload",
            f"{uid}: {reason}; moved to rejected/",
            advice=f"once the cause is fixed: usreview site rejected --requeue {uid}",
            key="given up",
        )

    def _release(self, item: SpooledInstance) -> None:
        """``item`` leaves the spool: forget its own backoff."""
        with self._lock:
            self._waiting.pop(item.path.name, None)
        self.status.released(item.sop_instance_uid)

    def _failed(self, message: str, *, hub_down: bool, advice: str | None = None) -> None:
        with self._lock:
            delay = self._backoff.next_delay()
            self._resume_at = max(self._resume_at, time.monotonic() + delay)
        self._wake.set()  # the dispatcher pauses, then scans the spool again
        _log.warning("upload: %s (next try in %.1f s)", message, delay)
        self.status.error(
            "upload",
            f"{message} (next try in {delay:.1f} s)",
            hub_down=hub_down,
            advice=advice,
            hub=None if hub_down else "refusing",
        )


def _transfer_syntax(data: bytes) -> str | None:
    """The transfer syntax of a DICOM file's bytes, with its name when pydicom knows it."""
    import pydicom

    try:
        meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
        uid = meta.TransferSyntaxUID
    except Exception:  # whatever a damaged header raises: only advice is lost
        return None
    name = getattr(uid, "name", "")
    return f"{uid} ({name})" if name and name != str(uid) else str(uid)
