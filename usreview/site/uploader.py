"""Sealing spooled instances to the hub and uploading them, in the background.

:func:`upload_instance` seals one instance with the site's key to the hub's key, PUTs it
and checks the answer's receipt: signed by the hub's key, for this site, naming the
instance's UID and the SHA-256 of the bytes sent. Only then may the instance leave the
spool. :class:`Uploader` runs that for everything in the spool with a few worker threads,
woken as soon as an instance is offered (the gateway's upload process offers the names
the SCP sends it); while the hub is unreachable (or refuses the token) it waits with
exponential backoff and loses nothing. An instance the hub refuses for good (not
ultrasound, a UID conflict, too large) moves to the spool's ``rejected/``.
:meth:`Uploader.reconcile` removes from the spool, without sending them again, the
instances the hub's signed batch receipts say it already holds (asking only about the
UIDs in the spool, a hundred at a time).
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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
from usreview.site.spool import Spool, SpooledInstance
from usreview.site.status import StatusBook

__all__ = ["UploadOutcome", "Uploader", "upload_instance"]

_log = logging.getLogger(__name__)
_IN_MEMORY = 64 << 20
_RESCAN = 5.0


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
) -> UploadOutcome:
    """Seal ``data`` to the hub, upload it, verify the receipt.

    Raises
    ------
    HubUnreachableError, HubRefusedError
        The upload failed (see :mod:`usreview.site.client`).
    ReceiptError
        The receipt does not verify with the hub's key or names other bytes.
    """
    with _sink(len(data)) as sink:
        seal(io.BytesIO(data), sink, sender=site_keys, recipients=[hub_key])
        size = sink.tell()
        answer = client.put_instance(sop_instance_uid, sink, size)
    try:
        body = verify_receipt(answer.get("receipt", {}), hub_key, site=site)
    except InvalidReceiptError as exc:
        raise ReceiptError(f"{sop_instance_uid}: the hub's receipt was refused: {exc}") from None
    named = body.get("plaintext_sha256", body.get("sha256"))
    if body.get("sop_instance_uid") != sop_instance_uid or named != sha256:
        raise ReceiptError(
            f"{sop_instance_uid}: the hub's receipt names other bytes "
            f"({body.get('sop_instance_uid')}, sha256 {str(named)[:16]}...); kept in the spool"
        )
    return UploadOutcome(sop_instance_uid, sha256, bool(answer.get("duplicate")), body)


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
    """

    def __init__(
        self,
        config: SiteConfig,
        spool: Spool,
        status: StatusBook,
        *,
        workers: int = 2,
        client_factory: Callable[[], HubClient] | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.status = status
        self.workers = workers
        self._client_factory = client_factory or (lambda: HubClient(config))
        self._site_keys = config.load_private_keys()
        self._hub_key = config.load_hub_key()
        self._backoff = Backoff(config.backoff_initial, config.backoff_max)
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
                for uid, sha in self._held(answer):
                    held.setdefault(uid, set()).add(sha)
        finally:
            client.close()
        removed = 0
        for item in pending:
            named = held.get(item.sop_instance_uid, set())
            if item.sha256 in named and self.spool.acknowledge(item, item.sha256):
                self.status.uploaded(item.sop_instance_uid, duplicate=True)
                removed += 1
        return removed

    def _held(self, answer: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The (UID, SHA-256) pairs a verified batch receipt names."""
        try:
            body = verify_receipt(answer, self._hub_key, site=self.config.name)
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

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the uploads in progress (what is left stays in the spool)."""
        self._stop.set()
        self._wake.set()
        for _ in range(self.workers):
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    # -- threads ---------------------------------------------------------------------

    def _offer(self, items: list[SpooledInstance]) -> None:
        with self._lock:
            fresh = [item for item in items if item.path.name not in self._inflight]
            self._inflight.update(item.path.name for item in fresh)
        for item in fresh:
            self._queue.put(item)

    def _dispatch(self) -> None:
        # New instances come straight from the spool's listener; the folder is scanned
        # at start, after each pause and every few seconds (for what failed or was missed).
        while not self._stop.is_set():
            pause = self._resume_at - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)
                continue
            try:
                self._offer(self.spool.pending())
            except OSError as exc:
                self.status.error("spool", str(exc))
            self._wake.wait(_RESCAN)
            self._wake.clear()

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
                except Exception as exc:  # a bug must not end the worker: keep the instance
                    _log.exception("upload of %s failed", item.sop_instance_uid)
                    self._failed(f"{item.sop_instance_uid}: unexpected {exc!r}", hub_down=False)
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

    def _upload(self, client: HubClient, item: SpooledInstance) -> None:
        if self._stop.is_set():
            return
        try:
            data = self.spool.read(item)  # opened if sealed, its hash checked
            if data is None:
                return  # acknowledged meanwhile (the same bytes received again)
            outcome = upload_instance(
                client,
                site=self.config.name,
                site_keys=self._site_keys,
                hub_key=self._hub_key,
                sop_instance_uid=item.sop_instance_uid,
                data=data,
                sha256=item.sha256,
            )
        except SpoolKeyError as exc:  # the configuration, not the instance: keep it
            self._failed(str(exc), hub_down=False)
        except SpoolError as exc:
            self.spool.reject(item, str(exc))
            self.status.error("spool", str(exc))
        except HubRefusedError as exc:
            if exc.permanent:
                self.spool.reject(item, str(exc))
                self.status.error("upload", f"{item.sop_instance_uid} rejected: {exc}")
            else:
                self._failed(f"{item.sop_instance_uid}: {exc}", hub_down=False)
        except (HubRequestError, ReceiptError) as exc:
            self._failed(str(exc), hub_down=True)
        else:
            self._backoff.reset()
            self.spool.acknowledge(item, outcome.sha256)
            self.status.uploaded(item.sop_instance_uid, outcome.duplicate)

    def _failed(self, message: str, *, hub_down: bool) -> None:
        with self._lock:
            delay = self._backoff.next_delay()
            self._resume_at = max(self._resume_at, time.monotonic() + delay)
        self._wake.set()  # the dispatcher pauses, then scans the spool again
        _log.warning("upload: %s (next try in %.1f s)", message, delay)
        self.status.error("upload", f"{message} (next try in {delay:.1f} s)", hub_down=hub_down)
