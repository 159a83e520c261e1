"""Following the hub's results feed and delivering each result at the site.

For each item after the persisted cursor (``STATE/results.cursor``), in order:

1. fetch its envelope (``GET results/{id}``) and check its SHA-256 against the feed's;
2. open it into ``STATE/inbox/`` with a key ring holding only the hub's key (the hub
   must be the sender) and the site's current private key or, for an envelope not
   addressed to it, each of the site's retired keys (``site.retired_keys``, newest
   first: the hub seals to the old key until it has registered the new one); an
   envelope that does not open is put aside in ``STATE/refused/`` and reported, never
   delivered;
3. refuse a message id opened before (the replay cache, ``STATE/replay.sqlite``);
4. deliver: the outbox, then a durable marker per PACS (see :mod:`usreview.site.deliver`);
   a result that supersedes an earlier one (the item's ``supersedes``) retires the earlier
   one's files to the study's ``superseded/`` folder (:mod:`usreview.site.supersede`);
5. record the message id as opened, then advance the cursor durably.

A crash anywhere repeats at most the delivery of one result, and delivering twice is
harmless (same outbox name, same SOP Instance UID at the PACS). The hub only lists the
results addressed to this site, so a result for another site never appears here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from usreview.envelope import (
    EnvelopeError,
    EnvelopeInfo,
    KeyRing,
    NotARecipientError,
    NotYetValidError,
    ReplayCache,
    ReplayedError,
    unseal,
)
from usreview.envelope.atomic import replace_file
from usreview.site.backoff import Backoff
from usreview.site.client import HubClient
from usreview.site.config import SiteConfig
from usreview.site.deliver import PacsQueue, deliver_to_outbox, is_dicom
from usreview.site.errors import DeliveryError, HubRequestError, HubUnreachableError, SiteError
from usreview.site.status import CURSOR_FILE, StatusBook, read_cursor
from usreview.site.studies import StudyLog

__all__ = ["Delivered", "ResultFollower"]

_log = logging.getLogger(__name__)
#: The shortest time between two polls of the feed that both came back empty.
MIN_POLL_SECONDS = 0.5

#: What one result became at the site: ``(result id, outbox path or None)``.
Delivered = tuple[int, Path | None]


class ResultFollower:
    """Fetch, open and deliver the site's results.

    Parameters
    ----------
    config
        The site's configuration.
    status
        Where deliveries and errors are recorded.
    client
        A :class:`HubClient` (default: a new one from ``config``).
    studies
        The per-study journal deliveries are recorded in (default: the state folder's;
        the gateway's upload process shares one with its uploader).
    """

    def __init__(
        self,
        config: SiteConfig,
        status: StatusBook,
        *,
        client: HubClient | None = None,
        studies: StudyLog | None = None,
    ) -> None:
        self.config = config
        self.status = status
        self.client = client or HubClient(config)
        self.state = config.state
        for name in ("inbox", "refused", "pacs"):
            (self.state / name).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.studies = studies if studies is not None else StudyLog(self.state)
        self._remove_leftovers()
        # The current key first, then the retired ones, newest first.
        self._site_keys = (config.load_private_keys(), *config.load_retired_private_keys())
        self._ring = KeyRing([config.load_hub_key()])
        self._replay = ReplayCache(self.state / "replay.sqlite")
        self.pacs = PacsQueue(self.state / "pacs", config.pacs, config.ae_title)
        self.cursor = read_cursor(self.state)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Per PACS: one that is down (or refuses a result for now) holds up only its own.
        self._pacs_retry_at: dict[str, float] = {}
        self._pacs_backoff: dict[str, Backoff] = {}

    def _remove_leftovers(self) -> None:
        """Remove the partial plaintexts a crash can leave: a result being opened in the
        inbox, a copy being written into the outbox (complete files are never touched)."""
        for leftover in self.state.glob("inbox/*.payload*"):
            leftover.unlink(missing_ok=True)
        for leftover in self.state.glob("inbox/.*"):
            leftover.unlink(missing_ok=True)
        outbox = self.config.outbox
        if outbox.is_dir():
            for leftover in outbox.glob("*/.*.part"):
                leftover.unlink(missing_ok=True)

    # -- one step --------------------------------------------------------------------

    def poll(self, wait: float = 0.0) -> list[Delivered]:
        """Ask for results after the cursor (waiting up to ``wait`` s) and deliver them.

        Raises
        ------
        HubUnreachableError, HubRefusedError
            The feed could not be read; nothing was skipped.
        """
        answer = self.client.results(self.cursor, wait=wait)
        items = answer.get("results")
        if not isinstance(items, list):
            raise HubRequestError("the hub's results feed answered without a result list")
        done = []
        for item in items:
            if self._stop.is_set():
                break
            done.append(self.process(item))
        return done

    def process(self, item: Mapping[str, Any]) -> Delivered:
        """Deliver one feed item and advance the cursor past it."""
        try:
            result_id = int(item["id"])
            cursor = int(item.get("cursor", result_id))
        except (KeyError, TypeError, ValueError):
            raise HubRequestError(
                f"the hub's results feed sent an item without a valid id: {str(item)[:200]}"
            ) from None
        if cursor <= self.cursor:
            return result_id, None
        envelope = self.client.result(result_id)
        expected = item.get("sha256")
        if expected and hashlib.sha256(envelope).hexdigest() != expected:
            raise HubRequestError(f"result {result_id}: the envelope arrived damaged")
        delivered = self._open_and_deliver(result_id, item, envelope)
        self._save_cursor(cursor)
        self.send_pending()
        return result_id, delivered

    def _open_and_deliver(
        self, result_id: int, item: Mapping[str, Any], envelope: bytes
    ) -> Path | None:
        """Deliver the result; one that does not open is put aside (``refused/``) with its
        feed item, for :meth:`retry_refused` once the cause is fixed."""
        try:
            return self._deliver(result_id, item, envelope)
        except NotYetValidError as exc:  # this machine's clock is behind: it will be valid
            raise DeliveryError(
                f"result {result_id} is not valid yet ({exc}); check this machine's clock"
            ) from None
        except EnvelopeError as exc:
            refused = self.state / "refused"
            replace_file(refused / f"{result_id:08d}.envelope", envelope, mode=0o600)
            note = json.dumps({"item": dict(item), "reason": str(exc)}).encode()
            replace_file(refused / f"{result_id:08d}.json", note, mode=0o600)
            self.status.error("results", f"result {result_id} refused and put aside: {exc}")
            return None

    def retry_refused(self) -> tuple[list[Delivered], int]:
        """Open again the results put aside in ``refused/`` (after the site's keys or the
        hub's key were fixed): what was delivered, and how many are still refused.

        Each is fetched from the hub again (it seals an expired result again when it is
        fetched); the copy put aside is opened only if the hub cannot be asked."""
        done: list[Delivered] = []
        left = 0
        for aside in sorted((self.state / "refused").glob("*.envelope")):
            try:
                result_id = int(aside.stem)
            except ValueError:
                continue
            note = aside.with_suffix(".json")
            item: Mapping[str, Any] = {"id": result_id}
            with contextlib.suppress(OSError, ValueError, TypeError):
                item = dict(json.loads(note.read_text())["item"])
            try:
                envelope = self.client.result(result_id)
            except HubRequestError as exc:
                _log.info(
                    "result %s: not fetched again (%s), opening the copy aside", result_id, exc
                )
                envelope = aside.read_bytes()
            try:
                delivered = self._deliver(result_id, item, envelope)
            except EnvelopeError as exc:
                self.status.error("results", f"result {result_id} still refused: {exc}")
                left += 1
                continue
            note.unlink(missing_ok=True)
            aside.unlink()
            done.append((result_id, delivered))
        self.send_pending()
        return done, left

    def _deliver(self, result_id: int, item: Mapping[str, Any], envelope: bytes) -> Path | None:
        """Open ``envelope`` and deliver its payload (``None``: delivered before).

        Raises
        ------
        EnvelopeError
            It does not open (nothing was delivered).
        """
        payload = self.state / "inbox" / f"{result_id:08d}.payload"
        payload.unlink(missing_ok=True)  # left by a crash: open again
        info = self._unseal(result_id, envelope, payload)
        try:
            try:
                self._replay.check(info.sender_id, info.message_id)
            except ReplayedError:
                _log.info("result %s: message opened before (already delivered)", result_id)
                return None
            study = str(item.get("study_instance_uid", ""))
            kind = str(item.get("kind") or item.get("label") or "result")
            supersedes = item.get("supersedes")
            target = deliver_to_outbox(
                self.config.outbox,
                payload,
                result_id=result_id,
                study_instance_uid=study,
                kind=kind,
                supersedes=supersedes if isinstance(supersedes, int) else None,
            )
            where = [str(target)]
            queued: list[str] = []
            if self.config.pacs and is_dicom(target):
                self.pacs.enqueue(result_id, target)
                queued = list(self.pacs.destinations)
                where += [f"pacs:{name}" for name in queued]
            self.studies.result(result_id, kind, target.parent.name, target, queued)
            with contextlib.suppress(ReplayedError):
                self._replay.record(info.sender_id, info.message_id, info.not_after)
        finally:
            payload.unlink(missing_ok=True)
        self.status.result(result_id, kind, where)
        return target

    def _unseal(self, result_id: int, envelope: bytes, payload: Path) -> EnvelopeInfo:
        """Open ``envelope`` with the first of the site's keys it is addressed to."""
        refused: NotARecipientError | None = None
        for n, key in enumerate(self._site_keys):
            try:
                info = unseal(io.BytesIO(envelope), payload, recipient=key, keyring=self._ring)
            except NotARecipientError as exc:
                refused = refused or exc  # the current key's sentence
                continue
            if n:
                _log.info("result %s: opened with a retired key %s", result_id, key.key_id.hex())
            return info
        assert refused is not None  # there is always a current key
        raise refused

    def send_pending(self, *, force: bool = False) -> int:
        """Try the PACS deliveries still pending (after a backoff unless ``force``).

        Returns how many are still pending.
        """
        waiting: set[str] = set()  # destinations that failed this round, or back off
        now = time.monotonic()
        for pending in self.pacs.pending():
            name = pending.destination
            if name in waiting or (not force and now < self._pacs_retry_at.get(name, 0.0)):
                waiting.add(name)
                continue
            try:
                self.pacs.send(pending)
            except DeliveryError as exc:
                reason = str(exc)
                if exc.tries is not None and not exc.permanent:
                    tried = self.pacs.count_failure(pending)
                    if tried < exc.tries:
                        reason = f"{exc}, try {tried} of {exc.tries}"
                    else:
                        reason = f"{exc}, {tried} times"
                if exc.permanent or (exc.tries is not None and pending.attempts + 1 >= exc.tries):
                    # it will never take this one: the next ones go on
                    self.pacs.set_aside(pending, reason)
                    self.studies.pacs(pending.result_id, pending.study, name, reason)
                    self.status.error("pacs", f"{reason}; set aside in pacs/{name}/failed")
                    continue
                self._back_off(name, reason)
                waiting.add(name)
            except Exception as exc:  # a bug must not stop every later delivery
                _log.exception("PACS %s: unexpected failure", name)
                self._back_off(name, f"unexpected failure: {exc}")
                waiting.add(name)
            else:
                self._pacs_backoff.pop(name, None)
                self.studies.pacs(pending.result_id, pending.study, name)
        self.studies.flush()
        return len(self.pacs.pending())

    def _back_off(self, destination: str, reason: str) -> None:
        backoff = self._pacs_backoff.setdefault(
            destination, Backoff(self.config.backoff_initial, self.config.backoff_max)
        )
        delay = backoff.next_delay()
        self._pacs_retry_at[destination] = time.monotonic() + delay
        self.status.error("pacs", f"{reason} (next try in {delay:.1f} s)")

    def _save_cursor(self, cursor: int) -> None:
        replace_file(self.state / CURSOR_FILE, json.dumps({"cursor": cursor}).encode(), mode=0o600)
        self.cursor = cursor

    # -- loops -----------------------------------------------------------------------

    def pull(self) -> list[Delivered]:
        """Deliver everything pending now (no waiting); for ``usreview site pull``."""
        done: list[Delivered] = []
        while True:
            batch = self.poll(0.0)
            done += batch
            if not batch:
                break
        self.send_pending(force=True)
        return done

    def start(self) -> None:
        """Follow the feed in a background thread (long-poll), until :meth:`stop`."""
        self._thread = threading.Thread(target=self._follow, name="results", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following (a long-poll in progress is abandoned)."""
        self._stop.set()
        self.client.abort()
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.close()
        self.studies.flush()

    def _follow(self) -> None:
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        while not self._stop.is_set():
            try:
                asked = time.monotonic()
                done = self.poll(self.config.results_wait)
                self.send_pending()
                backoff.reset()
                if not done:  # an empty answer at once (results.wait 0): do not hammer
                    self._stop.wait(MIN_POLL_SECONDS - (time.monotonic() - asked))
            except Exception as exc:  # the thread's boundary: report, wait, try again
                if self._stop.is_set():
                    return
                if not isinstance(exc, SiteError | OSError):
                    _log.exception("results: unexpected failure")
                delay = backoff.next_delay()
                unreachable = isinstance(exc, HubUnreachableError)
                self.status.error(
                    "results", f"{exc} (next try in {delay:.1f} s)", hub_down=unreachable
                )
                self._stop.wait(delay)
