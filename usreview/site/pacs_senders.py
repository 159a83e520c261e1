"""Sending the PACS queue: one thread per PACS, apart from the results feed.

The results feed writes a result into the outbox and queues it for each PACS
(:meth:`~usreview.site.deliver.PacsQueue.enqueue`); it never waits for a PACS. Each
configured PACS has a sender thread here that sends its queue, oldest result first, and
then sleeps until :meth:`PacsSenders.wake` (a result was queued) or
:data:`RESCAN_SECONDS` (``usreview site pacs --retry-failed`` queues from another process).
A PACS that hangs (accepts, never answers) holds up only its own thread, for its association
timeout; one that is down or out of resources backs off on its own
(``upload.backoff_initial`` to ``upload.backoff_max``), the others go on. What a PACS will
never take, and a delivery whose file is missing, is set aside in ``pacs/NAME/failed/``
with the reason, recorded in the status file and the per-study journal. At a PACS-only
site (``results.outbox = false``) a result is gone once every PACS took it: that is
recorded (:func:`usreview.site.retention.every_pacs_took`).

:meth:`PacsSenders.send_pending` does the same rounds in the caller's thread, for
``usreview site pull`` (no threads) and for tests.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pynetdicom.association import Association

from usreview.site.backoff import Backoff
from usreview.site.deliver import PacsQueue, PendingDelivery, break_association
from usreview.site.errors import DeliveryError
from usreview.site.retention import every_pacs_took
from usreview.site.status import StatusBook
from usreview.site.studies import StudyLog

__all__ = ["RESCAN_SECONDS", "PacsSenders"]

_log = logging.getLogger(__name__)
#: An idle sender looks at its queue this often (seconds), woken or not.
RESCAN_SECONDS = 5.0


@dataclass
class _Destination:
    """One PACS's sender state."""

    name: str
    backoff: Backoff
    wake: threading.Event = field(default_factory=threading.Event)
    #: Held for a round: the thread and ``send_pending`` never send the same item at once.
    lock: threading.Lock = field(default_factory=threading.Lock)
    retry_at: float = 0.0
    thread: threading.Thread | None = None
    #: The association in progress, broken by :meth:`PacsSenders.stop`.
    assoc: Association | None = None


class PacsSenders:
    """Send each PACS's queue in its own thread (:meth:`start`), or in the caller's.

    Parameters
    ----------
    queue
        The PACS queue.
    status
        Where errors and deliveries set aside are recorded.
    studies
        The per-study journal (a delivery, or a delivery set aside).
    backoff_initial, backoff_max
        The backoff of a PACS that is down, in seconds.
    pacs_only
        ``results.outbox = false``: record each result that every PACS took as removed.
    """

    def __init__(
        self,
        queue: PacsQueue,
        status: StatusBook,
        studies: StudyLog,
        *,
        backoff_initial: float,
        backoff_max: float,
        pacs_only: bool = False,
    ) -> None:
        self.queue = queue
        self.status = status
        self.studies = studies
        self.pacs_only = pacs_only
        self._gone: set[int] = set()  # results recorded as removed (once, whichever thread)
        self._gone_lock = threading.Lock()
        self._stop = threading.Event()
        self._destinations = {
            name: _Destination(name, Backoff(backoff_initial, backoff_max))
            for name in queue.destinations
        }

    # -- threads -----------------------------------------------------------------------

    def start(self) -> None:
        """Start one sender thread per PACS."""
        for dest in self._destinations.values():
            if dest.thread is None:
                dest.thread = threading.Thread(
                    target=self._run, args=(dest,), name=f"pacs-{dest.name}", daemon=True
                )
                dest.thread.start()

    def wake(self) -> None:
        """Something was queued: each sender looks at its queue now (unless backing off)."""
        for dest in self._destinations.values():
            dest.wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads; a C-STORE in progress is broken off (its marker stays, it is
        sent again later: sending twice is harmless)."""
        self._stop.set()
        for dest in self._destinations.values():
            dest.wake.set()
            assoc = dest.assoc
            if assoc is not None:
                break_association(assoc)
        deadline = time.monotonic() + timeout
        for dest in self._destinations.values():
            if dest.thread is not None:
                dest.thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, dest: _Destination) -> None:
        while not self._stop.is_set():
            dest.wake.clear()
            try:
                with dest.lock:
                    self._round(dest, force=False)
                self.studies.flush()
            except Exception as exc:  # the thread's boundary: a bug must not end deliveries
                _log.exception("PACS %s: unexpected failure", dest.name)
                self._back_off(dest, f"PACS {dest.name}: unexpected failure: {exc}")
            wait = RESCAN_SECONDS
            backing_off = dest.retry_at - time.monotonic()
            if backing_off > 0:
                wait = min(wait, backing_off)
            dest.wake.wait(wait)

    # -- rounds ------------------------------------------------------------------------

    def send_pending(self, *, force: bool = False) -> int:
        """Send what every PACS has pending, in this thread (after its backoff unless
        ``force``); return how many deliveries are still pending."""
        for dest in self._destinations.values():
            with dest.lock:
                self._round(dest, force=force)
        self.studies.flush()
        return len(self.queue.pending())

    def _round(self, dest: _Destination, *, force: bool) -> None:
        """Send ``dest``'s queue until it is empty or the PACS must be waited for.
        Holds ``dest.lock``."""
        if not force and time.monotonic() < dest.retry_at:
            return
        for item in self.queue.pending(dest.name):
            if self._stop.is_set() or not self._send(dest, item):
                return

    def _send(self, dest: _Destination, item: PendingDelivery) -> bool:
        """Send one delivery; False when the PACS is to be waited for (backing off)."""

        def connected(assoc: Association) -> None:
            dest.assoc = assoc
            if self._stop.is_set():  # stop() ran before it could see this association
                break_association(assoc)

        try:
            self.queue.send(item, connected=connected)
        except DeliveryError as exc:
            reason = str(exc)
            if exc.tries is not None and not exc.permanent:
                tried = self.queue.count_failure(item)
                if tried < exc.tries:
                    reason = f"{exc}, try {tried} of {exc.tries}"
                else:
                    reason = f"{exc}, {tried} times"
            if exc.permanent or (exc.tries is not None and item.attempts + 1 >= exc.tries):
                # it will never take this one: the next ones go on
                self.queue.set_aside(item, reason)
                self.studies.pacs(item.result_id, item.study, dest.name, reason)
                self.status.error("pacs", f"{reason}; set aside in pacs/{dest.name}/failed")
                _log.error("%s; set aside in pacs/%s/failed", reason, dest.name)
                return True
            if self._stop.is_set():  # broken off by stop(): not the PACS's fault
                return False
            self._back_off(dest, reason)
            return False
        except Exception as exc:  # a bug must not stop every later delivery
            _log.exception("PACS %s: unexpected failure", dest.name)
            self._back_off(dest, f"PACS {dest.name}: unexpected failure: {exc}")
            return False
        finally:
            dest.assoc = None
        dest.backoff.reset()
        dest.retry_at = 0.0
        self.studies.pacs(item.result_id, item.study, dest.name)
        if self.pacs_only:
            with self._gone_lock:
                if item.result_id not in self._gone and every_pacs_took(
                    item.result_id, self.queue, self.status
                ):
                    self._gone.add(item.result_id)
        return True

    def _back_off(self, dest: _Destination, reason: str) -> None:
        delay = dest.backoff.next_delay()
        dest.retry_at = time.monotonic() + delay
        self.status.error("pacs", f"{reason} (next try in {delay:.1f} s)")
        _log.warning("%s (next try in %.1f s)", reason, delay)
