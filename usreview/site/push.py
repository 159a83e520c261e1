"""``usreview site push``: upload files or folders to the hub once, without a gateway.

Each file is sealed and uploaded like a spooled instance (see
:func:`usreview.site.uploader.upload_instance`); it counts as acknowledged only with a
verified receipt naming its UID and bytes. An unreachable hub is retried a few times with
backoff; anything not acknowledged in the end is named in
:class:`~usreview.site.errors.NotAcknowledgedError`. A file that cannot be read here (missing,
unreadable, not DICOM) is not sent and is named apart (:attr:`PushReport.unread`). The files
are only read. Each instance the hub acknowledges, or refuses for what it is, is recorded in
the per-study journal (:class:`~usreview.site.studies.StudyLog`, shared safely with a
running gateway), so ``site status --study`` shows pushed exams too.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from usreview.dicom import iter_dicom_paths
from usreview.envelope import PrivateKeys, PublicKeys
from usreview.site.backoff import Backoff
from usreview.site.client import HubClient
from usreview.site.config import SiteConfig
from usreview.site.errors import HubRefusedError, HubUnreachableError, ReceiptError, SpoolError
from usreview.site.refusals import Refusal
from usreview.site.spool import check_uid
from usreview.site.studies import StudyLog, instance_header
from usreview.site.uploader import UploadOutcome, upload_instance

__all__ = ["PushReport", "push_paths"]

#: ``progress(done, total, path, outcome)`` after each file.
Progress = Callable[[int, int, Path, str], None]


@dataclass
class PushReport:
    """What a push did: acknowledged files with their outcome; files the hub did not
    acknowledge, and files not sent because they cannot be read here, with why."""

    acknowledged: dict[Path, UploadOutcome] = field(default_factory=dict)
    failed: dict[Path, str] = field(default_factory=dict)
    unread: dict[Path, str] = field(default_factory=dict)


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


def push_paths(
    config: SiteConfig,
    paths: Iterable[Path],
    *,
    progress: Progress | None = None,
    attempts: int = 4,
    client: HubClient | None = None,
) -> PushReport:
    """Upload every DICOM file under ``paths``; return what was acknowledged and what not."""
    files = list(iter_dicom_paths(paths))
    site_keys = config.load_private_keys()
    hub_key = config.load_hub_key()
    report = PushReport()
    own = client is None
    client = client or HubClient(config)
    studies = StudyLog(config.state)
    try:
        for done, path in enumerate(files, 1):
            outcome = _push_one(client, config, path, site_keys, hub_key, attempts, report, studies)
            if progress is not None:
                progress(done, len(files), path, outcome)
    finally:
        studies.close()
        if own:
            client.close()
    return report


def _push_one(
    client: HubClient,
    config: SiteConfig,
    path: Path,
    site_keys: PrivateKeys,
    hub_key: PublicKeys,
    attempts: int,
    report: PushReport,
    studies: StudyLog,
) -> str:
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
    backoff = Backoff(config.backoff_initial, min(config.backoff_max, 10.0))
    for attempt in range(attempts):
        try:
            outcome = upload_instance(
                client,
                site=config.name,
                site_keys=site_keys,
                hub_key=hub_key,
                sop_instance_uid=uid,
                data=data,
                sha256=hashlib.sha256(data).hexdigest(),
            )
        except (HubUnreachableError, ReceiptError) as exc:
            if attempt + 1 == attempts:
                report.failed[path] = str(exc)
                return "failed"
            time.sleep(backoff.next_delay())
        except HubRefusedError as exc:
            report.failed[path] = str(exc)
            if exc.refusal is Refusal.FINAL:  # the instance itself (as the uploader journals)
                studies.rejected(uid, instance_header(data), str(exc), spooled_at=None)
            return "refused"
        else:
            report.acknowledged[path] = outcome
            study = outcome.receipt.get("study_instance_uid")
            studies.acknowledged(
                uid,
                study if isinstance(study, str) else None,
                instance_header(data),
                spooled_at=None,  # never spooled: no time the site received it
                duplicate=outcome.duplicate,
            )
            return "already at the hub" if outcome.duplicate else "stored"
    return "failed"  # pragma: no cover
