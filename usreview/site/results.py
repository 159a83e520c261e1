"""Following the hub's results feed and delivering each result at the site.

The cursor (``STATE/results.cursor``) is read strictly (:mod:`usreview.site.cursor`): a
damaged one, or one missing at a site that delivered results before, stops the delivery
of results (never a restart at 0) until it is set with ``usreview site pull --cursor N``.
For each item after it, in order:

1. fetch its envelope (``GET results/{id}``) and check its SHA-256 against the feed's;
2. open it into ``STATE/inbox/`` with a key ring holding only the hub's key (the hub
   must be the sender) and the site's current private key or, for an envelope not
   addressed to it, each of the site's retired keys (``site.retired_keys``, newest
   first: the hub seals to the old key until it has registered the new one); an
   envelope that does not open is put aside in ``STATE/refused/`` and reported, never
   delivered;
3. refuse a message id opened before (the replay cache, ``STATE/replay.sqlite``);
4. read the study the signed payload names (:mod:`usreview.site.identity`): one that
   contradicts the feed's unsigned ``study_instance_uid`` (or DICOM without readable
   UIDs) goes to ``STATE/quarantine/``, never to the outbox or a PACS;
5. deliver: the outbox folder of the payload's study, then the PACS queue (its own copy
   and a durable marker per PACS, see :mod:`usreview.site.deliver`); a result that
   supersedes an earlier one (the item's ``supersedes``) retires the earlier one's files
   to the study's ``superseded/`` folder (:mod:`usreview.site.supersede`). At a PACS-only
   site (``results.outbox = false``) only the PACS queue: a result no PACS takes is not
   kept (:mod:`usreview.site.retention`);
6. record the message id as opened, then advance the cursor durably (keeping the previous
   one in ``results.cursor.bak``).

The feed's thread never talks to a PACS: each PACS's queue is sent by a thread of its own
(:mod:`usreview.site.pacs_senders`), woken when a result is queued, so a PACS that hangs
delays nothing in the outbox. The results put aside in ``refused/`` are tried again when
the follower starts and every :data:`REFUSED_RETRY_SECONDS` (:meth:`ResultFollower.retry_refused`);
the outbox files past ``results.keep_days`` are removed then too, every
:data:`~usreview.site.retention.PRUNE_SECONDS` (:meth:`ResultFollower.prune_outbox`).

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
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from usreview.envelope import (
    EnvelopeError,
    EnvelopeInfo,
    KeyRing,
    NotYetValidError,
    ReplayCache,
    ReplayedError,
    UntrustedSenderError,
    unseal,
)
from usreview.envelope.atomic import replace_file
from usreview.site.backoff import Backoff
from usreview.site.client import HubClient
from usreview.site.config import SiteConfig
from usreview.site.cursor import ResultsCursorError, load_cursor, read_saved_cursor, save_cursor
from usreview.site.deliver import PacsQueue, deliver_to_outbox, study_folder_name
from usreview.site.errors import DeliveryError, HubRequestError, HubUnreachableError, SiteError
from usreview.site.hubkeys import REFRESH_SECONDS, changed_hub_keys
from usreview.site.identity import QUARANTINE, PayloadIdentity, identify, quarantine
from usreview.site.pacs_senders import PacsSenders
from usreview.site.retention import PRUNE_SECONDS, not_kept, prune_outbox
from usreview.site.status import StatusBook
from usreview.site.studies import StudyLog

__all__ = ["REFUSED_RETRY_SECONDS", "Delivered", "ResultFollower"]

_log = logging.getLogger(__name__)
#: The shortest time between two polls of the feed that both came back empty.
MIN_POLL_SECONDS = 0.5
#: How often (seconds) the follower tries again the results put aside in ``refused/``.
REFUSED_RETRY_SECONDS = 3600.0

#: What one result became at the site: ``(result id, where it was delivered)``: its outbox
#: file or, at a PACS-only site, its copy in the first PACS's queue; None when it was
#: delivered before, quarantined, refused or (PACS only, not DICOM) not kept.
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
    cursor
        Go on after this cursor (``usreview site pull --cursor N``): it is saved at once,
        whatever ``results.cursor`` holds (default: ``results.cursor``, read strictly).

    A follower whose state cannot be used (a damaged or missing cursor, see
    :mod:`usreview.site.cursor`; a damaged replay cache) delivers nothing: :attr:`blocked`
    says why, :meth:`poll`, :meth:`pull` and :meth:`retry_refused` raise it, and
    :meth:`start` records it in the status file and sends only what the PACS queues
    already hold.
    """

    def __init__(
        self,
        config: SiteConfig,
        status: StatusBook,
        *,
        client: HubClient | None = None,
        studies: StudyLog | None = None,
        cursor: int | None = None,
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
        self._hub_keys = config.load_hub_keys()
        self._ring = KeyRing(self._hub_keys)
        self.pacs = PacsQueue(self.state / "pacs", config.pacs, config.ae_title)
        self.pacs.remove_orphans()
        self.senders = PacsSenders(
            self.pacs,
            status,
            self.studies,
            backoff_initial=config.backoff_initial,
            backoff_max=config.backoff_max,
            pacs_only=not config.results_to_outbox,
        )
        #: Why nothing is delivered (None: the follower works).
        self.blocked: SiteError | None = None
        self._replay: ReplayCache | None = None
        try:
            self._replay = ReplayCache(self.state / "replay.sqlite")
        except sqlite3.DatabaseError as exc:
            self.blocked = SiteError(
                f"{self.state / 'replay.sqlite'} (the replay cache) is damaged ({exc}): no "
                "result is delivered until it is moved aside (a new one is made; the results "
                "cursor still keeps delivered results from coming again)"
            )
        self.cursor = 0
        self._cursor_saved = False  # whether results.cursor holds self.cursor, sound
        if cursor is not None:
            self._set_cursor(cursor)
        else:
            try:
                self.cursor = load_cursor(config)
                self._cursor_saved = read_saved_cursor(self.state) is not None
            except ResultsCursorError as exc:
                self.blocked = self.blocked or exc
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_refused_retry = 0.0
        self._next_prune = 0.0
        self._next_trust_refresh = 0.0

    def _set_cursor(self, cursor: int) -> None:
        """Go on after ``cursor`` (an operator's decision), saved at once."""
        previous: int | None = None
        with contextlib.suppress(ResultsCursorError):
            previous = read_saved_cursor(self.state)
        save_cursor(self.state, cursor, previous)
        self.cursor = cursor
        self._cursor_saved = True
        was = "missing or damaged" if previous is None else str(previous)
        message = f"results cursor set to {cursor} by hand (it was {was}): results after it go"
        _log.warning(message)
        self.status.error("results", message)

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

    def _check(self) -> None:
        if self.blocked is not None:
            raise self.blocked

    # -- one step --------------------------------------------------------------------

    def poll(self, wait: float = 0.0) -> list[Delivered]:
        """Ask for results after the cursor (waiting up to ``wait`` s) and deliver them.

        Raises
        ------
        HubUnreachableError, HubRefusedError
            The feed could not be read; nothing was skipped.
        ResultsCursorError, SiteError
            The follower is :attr:`blocked`: nothing was asked or delivered.
        """
        self._check()
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
        """Deliver one feed item and advance the cursor past it (the PACS senders are
        woken; they send it in their own threads, or at the end of :meth:`pull`)."""
        self._check()
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
        self.senders.wake()
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
            self.status.error(
                "results",
                f"result {result_id} refused and put aside: {exc}",
                advice="fix the hub's key (hub.pub) or the site's keys (site.retired_keys), "
                "or the clock; the gateway tries it again at start and every hour "
                "('site pull --retry-refused' without a gateway)",
            )
            return None

    def retry_refused(self) -> tuple[list[Delivered], int]:
        """Open again the results put aside in ``refused/`` (after the site's keys or the
        hub's key were fixed): what was delivered, and how many are still refused.

        Each is fetched from the hub again (it seals an expired result again when it is
        fetched); the copy put aside is opened only if the hub cannot be asked. The
        follower's thread calls it when it starts and every :data:`REFUSED_RETRY_SECONDS`.
        """
        self._check()
        done: list[Delivered] = []
        left = 0
        for aside in sorted((self.state / "refused").glob("*.envelope")):
            if self._stop.is_set():
                break
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
            _log.info("result %s: put aside before, delivered now", result_id)
        self.senders.wake()
        return done, left

    def _deliver(self, result_id: int, item: Mapping[str, Any], envelope: bytes) -> Path | None:
        """Open ``envelope`` and deliver its payload (``None``: delivered before, or
        quarantined).

        Raises
        ------
        EnvelopeError
            It does not open (nothing was delivered).
        """
        assert self._replay is not None  # else blocked
        payload = self.state / "inbox" / f"{result_id:08d}.payload"
        payload.unlink(missing_ok=True)  # left by a crash: open again
        info = self._unseal(result_id, envelope, payload)
        try:
            try:
                self._replay.check(info.sender_id, info.message_id)
            except ReplayedError:
                _log.info("result %s: message opened before (already delivered)", result_id)
                return None
            feed_study = str(item.get("study_instance_uid") or "")
            identity = identify(payload)
            problem = identity.disagreement(feed_study)
            target: Path | None = None
            if problem is None:
                target = self._place(result_id, item, payload, identity, feed_study)
            else:
                self._quarantine(result_id, item, envelope, problem, identity)
            with contextlib.suppress(ReplayedError):
                self._replay.record(info.sender_id, info.message_id, info.not_after)
            return target
        finally:
            payload.unlink(missing_ok=True)

    def _place(
        self,
        result_id: int,
        item: Mapping[str, Any],
        payload: Path,
        identity: PayloadIdentity,
        feed_study: str,
    ) -> Path | None:
        """Deliver an opened payload that agrees with its feed item: the outbox folder of
        the study it names itself (the feed's when it names none), then (DICOM) the PACS
        queue."""
        kind = str(item.get("kind") or item.get("label") or "result")
        if not self.config.results_to_outbox:
            return self._place_pacs_only(result_id, kind, payload, identity, feed_study)
        supersedes = item.get("supersedes")
        target = deliver_to_outbox(
            self.config.outbox,
            payload,
            result_id=result_id,
            study_instance_uid=identity.study or feed_study,
            kind=kind,
            supersedes=supersedes if isinstance(supersedes, int) else None,
        )
        where = [str(target)]
        queued: list[str] = []
        if self.config.pacs and identity.is_dicom:
            self.pacs.enqueue(
                result_id,
                payload,
                study=target.parent.name,
                sop_instance_uid=identity.sop_instance_uid,
                outbox=target,
            )
            queued = list(self.pacs.destinations)
            where += [f"pacs:{name}" for name in queued]
        self.studies.result(result_id, kind, target.parent.name, target, queued)
        self.status.result(result_id, kind, where)
        return target

    def _place_pacs_only(
        self,
        result_id: int,
        kind: str,
        payload: Path,
        identity: PayloadIdentity,
        feed_study: str,
    ) -> Path | None:
        """``results.outbox = false``: queue a DICOM payload for every PACS (its copies
        there are all the site keeps of it); any other is not kept."""
        study = study_folder_name(identity.study or feed_study)
        queued: list[str] = []
        copy: Path | None = None
        if identity.is_dicom and self.pacs.destinations:  # (load_config requires a PACS)
            self.pacs.enqueue(
                result_id, payload, study=study, sop_instance_uid=identity.sop_instance_uid
            )
            queued = list(self.pacs.destinations)
            copy = self.pacs.root / queued[0] / f"{result_id:08d}.dcm"
        else:
            not_kept(result_id, kind, self.status)
        self.studies.result(result_id, kind, study, None, queued)
        self.status.result(result_id, kind, [f"pacs:{name}" for name in queued])
        return copy

    def _quarantine(
        self,
        result_id: int,
        item: Mapping[str, Any],
        envelope: bytes,
        problem: str,
        identity: PayloadIdentity,
    ) -> None:
        quarantine(self.state, result_id, envelope, item, problem, identity)
        message = (
            f"result {result_id} quarantined in {QUARANTINE}/, not delivered to the outbox "
            f"or any PACS: {problem}"
        )
        _log.error(message)
        self.status.error(
            "results",
            message,
            advice="the hub's feed and the signed result disagree about the study: tell the "
            f"hub's administrator (the sealed result and the feed entry are in "
            f"state/{QUARANTINE}/{result_id:08d}.*)",
        )

    def _unseal(self, result_id: int, envelope: bytes, payload: Path) -> EnvelopeInfo:
        """Open ``envelope`` with the site's key it is addressed to (current or retired).

        A result signed by a hub key the site does not know yet (the hub rotated its key)
        makes it follow the hub's signed key transitions once, then open again.
        """
        try:
            info = unseal(
                io.BytesIO(envelope), payload, recipient=self._site_keys, keyring=self._ring
            )
        except UntrustedSenderError:
            keys = changed_hub_keys(self.config, self.client, self._hub_keys)
            if keys is None:
                raise
            self._hub_keys, self._ring = keys, KeyRing(keys)
            info = unseal(
                io.BytesIO(envelope), payload, recipient=self._site_keys, keyring=self._ring
            )
        current = self._site_keys[0].key_id
        if current not in info.recipient_ids:
            _log.info("result %s: opened with a retired key of the site", result_id)
        return info

    def send_pending(self, *, force: bool = False) -> int:
        """Try the PACS deliveries still pending, in this thread (after each PACS's
        backoff unless ``force``). Returns how many are still pending."""
        return self.senders.send_pending(force=force)

    def _save_cursor(self, cursor: int) -> None:
        save_cursor(self.state, cursor, self.cursor if self._cursor_saved else None)
        self.cursor = cursor
        self._cursor_saved = True

    # -- loops -----------------------------------------------------------------------

    def pull(self) -> list[Delivered]:
        """Deliver everything pending now (no waiting); for ``usreview site pull``.

        Every result goes into the outbox first; then each PACS gets its queue, and what
        it did not take gets one more try at once (a processing failure, 0x0110, is often
        passing; what is left waits for the gateway or the next pull)."""
        self._check()
        self._refresh_hub_trust_now()
        done: list[Delivered] = []
        while True:
            batch = self.poll(0.0)
            done += batch
            if not batch:
                break
        if self.send_pending(force=True):
            self.send_pending(force=True)
        self.prune_outbox()
        return done

    def prune_outbox(self) -> list[Path]:
        """Remove the outbox files past ``results.keep_days`` whose result every PACS took
        (:func:`~usreview.site.retention.prune_outbox`); return them."""
        return prune_outbox(self.config, self.pacs, self.status)

    def start(self) -> None:
        """Follow the feed in a background thread (long-poll), until :meth:`stop`; send
        each PACS's queue in a thread of its own.

        A :attr:`blocked` follower only sends what the PACS queues hold: the reason is
        logged and recorded in the status file, and nothing new is delivered."""
        self.senders.start()
        if self.blocked is not None:
            _log.error("results are not delivered: %s", self.blocked)
            self.status.error("results", f"results are not delivered: {self.blocked}")
            return
        self._thread = threading.Thread(target=self._follow, name="results", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following (a long-poll in progress is abandoned) and sending to the PACS
        (a C-STORE in progress is broken off; it is sent again later)."""
        self._stop.set()
        self.client.abort()
        self.senders.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.close()
        self.studies.flush()

    def _retry_refused_now(self) -> None:
        """Try the results put aside in ``refused/`` again, when it is time."""
        if time.monotonic() < self._next_refused_retry:
            return
        self._next_refused_retry = time.monotonic() + REFUSED_RETRY_SECONDS
        if not any((self.state / "refused").glob("*.envelope")):
            return
        try:
            done, left = self.retry_refused()
        except Exception as exc:  # the feed goes on; the next retry is in an hour
            if not isinstance(exc, SiteError | OSError):
                _log.exception("results: retrying the refused results failed")
            self.status.error("results", f"retrying the refused results failed: {exc}")
            return
        if done or left:
            _log.warning(
                "results put aside in refused/: %d delivered now, %d still refused",
                len(done),
                left,
            )

    def _refresh_hub_trust_now(self) -> None:
        """Ask the hub for its keys and its next TLS certificate, when it is time
        (:func:`~usreview.site.hubkeys.refreshed_hub_keys`; failures are only logged)."""
        if time.monotonic() < self._next_trust_refresh:
            return
        self._next_trust_refresh = time.monotonic() + REFRESH_SECONDS
        keys = changed_hub_keys(self.config, self.client, self._hub_keys)
        if keys is not None:
            self._hub_keys, self._ring = keys, KeyRing(keys)

    def _prune_now(self) -> None:
        """Remove the outbox files past ``results.keep_days``, when it is time."""
        if self.config.outbox_keep_days <= 0 or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_SECONDS
        try:
            self.prune_outbox()
        except Exception as exc:  # the feed goes on; the next try is in PRUNE_SECONDS
            _log.exception("outbox: removing the files past results.keep_days failed")
            self.status.error("outbox", f"removing old outbox files failed: {exc}")

    def _follow(self) -> None:
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        while not self._stop.is_set():
            self._refresh_hub_trust_now()
            self._retry_refused_now()
            self._prune_now()
            try:
                asked = time.monotonic()
                done = self.poll(self.config.results_wait)
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
