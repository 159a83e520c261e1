"""``usreview site push``: upload files or folders to the hub once, without a gateway.

Each file is sealed and uploaded like a spooled instance (see
:func:`usreview.site.uploader.upload_instance`); it counts as acknowledged only with a
verified receipt naming its UID and bytes. Before each hundred files the hub is asked,
in one signed batch receipt (``GET receipts?uid=...``), which of their UIDs it holds: a
file whose UID and bytes it holds is acknowledged without being sent again, so a push run
again after an interruption resumes where it stopped.

A hub that cannot be reached (no connection, a TLS failure, a time-out, 5xx or 503) is
tried :data:`ATTEMPTS` times with backoff for one file; once a file has failed that way,
the next ones are tried once each, and the push stops when :data:`DOWN_FILES` files in a
row failed so, or every try for :data:`DOWN_SECONDS` did: :attr:`PushReport.stopped` says
why and :attr:`PushReport.remaining` lists the files left. Anything else not acknowledged
is in :attr:`PushReport.failed`. A file that cannot be read here (missing, unreadable,
not DICOM) is not sent and is named apart (:attr:`PushReport.unread`). The files are only
read. Each instance the hub acknowledges, or refuses for what it is, is recorded in the
per-study journal (:class:`~usreview.site.studies.StudyLog`, shared safely with a running
gateway), so ``site status --study`` shows pushed exams too.

A push first asks the hub for its keys and the TLS certificate it serves next
(:func:`~usreview.site.hubkeys.refreshed_hub_keys`, as a gateway does every few hours), so
that a site that only pushes now and then still follows the hub's key rotations and
certificate switches.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from usreview.dicom import iter_dicom_paths
from usreview.envelope import PrivateKeys, PublicKeys
from usreview.site.backoff import Backoff
from usreview.site.client import RECEIPT_BATCH, HubClient
from usreview.site.config import SiteConfig
from usreview.site.errors import (
    HubRefusedError,
    HubRequestError,
    HubUnreachableError,
    ReceiptError,
    SpoolError,
)
from usreview.site.hubkeys import changed_hub_keys, refreshed_hub_keys
from usreview.site.refusals import Refusal
from usreview.site.spool import check_uid
from usreview.site.studies import StudyLog, instance_header
from usreview.site.uploader import UploadOutcome, held_instances, upload_instance

__all__ = ["ATTEMPTS", "DOWN_FILES", "DOWN_SECONDS", "PushReport", "push_paths"]

#: ``progress(done, total, path, outcome)`` after each file.
Progress = Callable[[int, int, Path, str], None]
#: Tries of one file while the hub answered the file before it.
ATTEMPTS = 4
#: Files in a row the hub could not be reached for, after which a push stops.
DOWN_FILES = 3
#: Seconds of tries that all failed to reach the hub, after which a push stops.
DOWN_SECONDS = 20.0
#: The longest wait between two tries of one file (seconds).
_MAX_DELAY = 10.0


@dataclass
class PushReport:
    """What a push did: acknowledged files with their outcome; files the hub did not
    acknowledge, and files not sent because they cannot be read here, with why; and, if
    it stopped because the hub could not be reached, why and the files left."""

    acknowledged: dict[Path, UploadOutcome] = field(default_factory=dict)
    failed: dict[Path, str] = field(default_factory=dict)
    unread: dict[Path, str] = field(default_factory=dict)
    #: Why the push stopped before its end (the hub's last error), or None.
    stopped: str | None = None
    #: The files not acknowledged because it stopped, in order (those of the outage's
    #: tries, then those never tried).
    remaining: list[Path] = field(default_factory=list)


class _Outage:
    """The tries that failed to reach the hub since it last answered, across files."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.since: float | None = None
        self.files: list[Path] = []
        self.reason = ""

    def answered(self) -> None:
        self.since = None
        self.files = []

    def failed(self, started: float, exc: HubRequestError) -> None:
        """A try begun at ``started`` did not reach the hub."""
        if self.since is None:
            self.since = started
        self.reason = str(exc)

    @property
    def down(self) -> bool:
        """Whether to stop: :data:`DOWN_FILES` files or :data:`DOWN_SECONDS` of tries."""
        if len(self.files) >= DOWN_FILES:
            return True
        return self.since is not None and self.clock() - self.since >= DOWN_SECONDS


def _uid(path: Path, data: bytes) -> str:
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        uid = str(ds.SOPInstanceUID)
    except InvalidDicomError:
        raise ValueError("not a DICOM file") from None
    except Exception as exc:  # pydicom raises many kinds on a damaged file
        raise ValueError(f"not a DICOM instance with a SOP Instance UID ({exc})") from None
    try:
        return check_uid(uid)
    except SpoolError as exc:
        raise ValueError(str(exc)) from None


def _header_uid(path: Path) -> str | None:
    """The SOP Instance UID in ``path``'s header, or None (read in full later)."""
    with contextlib.suppress(Exception):  # whatever a damaged file raises: reported later
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return check_uid(str(ds.SOPInstanceUID))
    return None


def push_paths(
    config: SiteConfig,
    paths: Iterable[Path],
    *,
    progress: Progress | None = None,
    attempts: int = ATTEMPTS,
    client: HubClient | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PushReport:
    """Upload every DICOM file under ``paths``; return what was acknowledged and what not.

    ``clock`` is monotonic seconds (the outage's limit, :data:`DOWN_SECONDS`).
    """
    files = list(iter_dicom_paths(paths))
    report = PushReport()
    own = client is None
    client = client or HubClient(config)
    studies = StudyLog(config.state)
    done = 0
    try:
        push = _Push(config, client, report, studies, attempts, _Outage(clock))
        push.hub_keys = refreshed_hub_keys(config, client) or push.hub_keys
        for start in range(0, len(files), RECEIPT_BATCH):
            batch = files[start : start + RECEIPT_BATCH]
            push.ask_held(batch)
            for path in batch:
                if push.outage.down:
                    break
                outcome = push.one(path)
                done += 1
                if progress is not None:
                    progress(done, len(files), path, outcome)
            if push.outage.down:
                break
    finally:
        studies.close()
        if own:
            client.close()
    if push.outage.down:
        report.stopped = push.outage.reason
        for path in push.outage.files:
            report.failed.pop(path, None)
        report.remaining = push.outage.files + files[done:]
    return report


class _Push:
    """One push's state: the hub, the keys, what the hub holds, the outage."""

    def __init__(
        self,
        config: SiteConfig,
        client: HubClient,
        report: PushReport,
        studies: StudyLog,
        attempts: int,
        outage: _Outage,
    ) -> None:
        self.config = config
        self.client = client
        self.report = report
        self.studies = studies
        self.attempts = attempts
        self.outage = outage
        self.site_keys: PrivateKeys = config.load_private_keys()
        self.hub_keys: list[PublicKeys] = config.load_hub_keys()  # the last is current
        #: UID -> the SHA-256 of the bytes the hub holds under it (of the current batch).
        self.held: dict[str, set[str]] = {}

    def ask_held(self, paths: list[Path]) -> None:
        """Ask the hub which of ``paths``' UIDs it holds (one batch receipt). A hub that
        does not answer counts towards the outage; then every file is sent."""
        self.held = {}
        uids = sorted({uid for uid in map(_header_uid, paths) if uid is not None})
        if not uids or self.outage.down:
            return
        started = self.outage.clock()
        try:
            answer = self.client.receipts(uids)
            pairs = self._held(answer)
        except HubUnreachableError as exc:
            self.outage.failed(started, exc)
            return
        except (HubRequestError, ReceiptError):  # an older hub, say: send them all
            return
        for uid, sha in pairs:
            self.held.setdefault(uid, set()).add(sha)

    def _held(self, answer: dict[str, Any]) -> list[tuple[str, str]]:
        try:
            return held_instances(answer, self.hub_keys, self.config.name)
        except ReceiptError:
            if not self._adopt_hub_keys():
                raise
            return held_instances(answer, self.hub_keys, self.config.name)

    def _adopt_hub_keys(self) -> bool:
        """Follow the hub's signed key transitions (it rotated its key, see
        :mod:`usreview.site.hubkeys`); whether a new key is trusted now."""
        keys = changed_hub_keys(self.config, self.client, self.hub_keys)
        if keys is None:
            return False
        self.hub_keys = keys
        return True

    def one(self, path: Path) -> str:
        """Push the file ``path``; return its outcome for the progress."""
        report = self.report
        try:
            data = path.read_bytes()
            uid = _uid(path, data)
        except FileNotFoundError:
            report.unread[path] = "no such file"
            return "not sent"
        except OSError as exc:
            report.unread[path] = f"cannot read it ({exc.strerror or exc})"
            return "not sent"
        except ValueError as exc:
            report.unread[path] = str(exc)
            return "not sent"
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 in self.held.get(uid, ()):
            self._acknowledged(path, data, UploadOutcome(uid, sha256, True, {}))
            return "already at the hub"
        backoff = Backoff(self.config.backoff_initial, min(self.config.backoff_max, _MAX_DELAY))
        tries = 1 if self.outage.files else self.attempts  # the hub failed the file before
        adopted = False
        attempt = 0
        while attempt < tries:
            started = self.outage.clock()
            try:
                outcome = upload_instance(
                    self.client,
                    site=self.config.name,
                    site_keys=self.site_keys,
                    hub_key=self.hub_keys[-1],
                    sop_instance_uid=uid,
                    data=data,
                    sha256=sha256,
                    trusted_hub_keys=self.hub_keys[:-1],
                )
            except (HubUnreachableError, ReceiptError) as exc:
                if isinstance(exc, ReceiptError) and not adopted and self._adopt_hub_keys():
                    adopted = True  # the hub rotated its key: again at once, sealed to it
                    continue
                attempt += 1
                if isinstance(exc, HubUnreachableError):
                    self.outage.failed(started, exc)
                if attempt == tries or self.outage.down:
                    report.failed[path] = str(exc)
                    if not isinstance(exc, HubUnreachableError):
                        return "failed"
                    self.outage.files.append(path)
                    return "hub unreachable"
                time.sleep(backoff.next_delay())
            except HubRefusedError as exc:
                self.outage.answered()
                report.failed[path] = str(exc)
                if exc.refusal is Refusal.FINAL:  # the instance itself (as the uploader journals)
                    self.studies.rejected(uid, instance_header(data), str(exc), spooled_at=None)
                return "refused"
            else:
                self.outage.answered()
                self._acknowledged(path, data, outcome)
                return "already at the hub" if outcome.duplicate else "stored"
        return "failed"  # pragma: no cover (attempts < 1)

    def _acknowledged(self, path: Path, data: bytes, outcome: UploadOutcome) -> None:
        self.report.acknowledged[path] = outcome
        study = outcome.receipt.get("study_instance_uid")
        self.studies.acknowledged(
            outcome.sop_instance_uid,
            study if isinstance(study, str) else None,  # (a batch receipt names none)
            instance_header(data),
            spooled_at=None,  # never spooled: no time the site received it
            duplicate=outcome.duplicate,
        )
