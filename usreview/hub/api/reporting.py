"""Publishing a reviewer's report: check, build, seal to the sites, record.

:func:`publish_report` runs in the service's thread pool, one publication per study at a
time in this process:

1. the reviewer must hold the study's claim and the study must be processed (or in
   review, or published: an amendment) (:meth:`usreview.store.review.ReviewStore.report_slot`);
   the claim is renewed for the time of the publication;
2. the key images and the measurements' source instances must be instances of the study,
   the recipients registered sites other than the originating one (400 otherwise);
3. the named instances are opened from the archive; the SR
   (:func:`usreview.review.report.build_report_sr`) and the text summary are built;
4. they are sealed and published (:func:`usreview.hub.api.publish.publish_result`) to
   the originating site and the recipients: ``report`` (the SR) and ``report-summary``
   (the text), each superseding the previous version's; each key image's DICOM goes to
   the recipients only (``key-image``: the originating site has it);
5. the version is recorded, the study published and the claim released.

Every result is published under an idempotency key made of the study, the version and a
digest of the report, so publishing the same report again after a failure between 4 and
5 publishes nothing twice. The SR's UIDs are derived from the same, for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from usreview.errors import ReportError
from usreview.hub.api.handlers_review import open_instance
from usreview.hub.api.publish import publish_result
from usreview.review.report import Report, build_report_sr, summary_text
from usreview.store import InstanceRecord, Reviewer
from usreview.store.review import ReportRecord, ReportSlot

if TYPE_CHECKING:
    from usreview.hub.api.app import ServiceContext

__all__ = ["publish_report"]

_LOCKS = tuple(threading.Lock() for _ in range(64))


def publish_report(
    context: ServiceContext, reviewer: Reviewer, study_instance_uid: str, report: Report
) -> ReportRecord:
    """Publish ``report`` about a study as ``reviewer`` (see the module docstring).

    Raises
    ------
    NotClaimedError, ClaimedError, NotReadyError
        The reviewer may not publish this study's report now.
    ReportError
        A key image, source instance or recipient the report names is not acceptable.
    NotFoundError
        No such study for this reviewer.
    StorageError
        Nothing new was recorded (publishing the same report again is safe).
    """
    review = context.archive.review
    with _LOCKS[hash(study_instance_uid) % len(_LOCKS)]:
        slot = review.report_slot(reviewer, study_instance_uid)
        review.claim(reviewer, study_instance_uid, seconds=context.settings.claim_minutes * 60)
        instances = {
            record.sop_instance_uid: record
            for record in context.archive.list_instances(
                reviewer, study_instance_uid=study_instance_uid
            )
        }
        _check_names(context, report, instances, slot.site)
        wanted = report.referenced_instances or (next(iter(instances)),)
        with tempfile.TemporaryDirectory(
            dir=context.ingestor.quarantine_dir, prefix="report-"
        ) as scratch:
            folder = Path(scratch)
            files = {uid: _open(context, reviewer, instances[uid], folder) for uid in wanted}
            return _publish(context, reviewer, study_instance_uid, report, slot, files, folder)


def _check_names(
    context: ServiceContext,
    report: Report,
    instances: Mapping[str, InstanceRecord],
    origin: str,
) -> None:
    if not instances:
        raise ReportError("key_images", "the study has no instance to report on")
    for n, uid in enumerate(report.key_images):
        if uid not in instances:
            raise ReportError(f"key_images[{n}]", f"{uid} is not an instance of this study")
    for n, measurement in enumerate(report.measurements):
        source = measurement.source_instance
        if source is not None and source not in instances:
            raise ReportError(
                f"measurements[{n}].source_instance", f"{source} is not an instance of this study"
            )
    for n, site in enumerate(report.recipients):
        if site == origin:
            raise ReportError(f"recipients[{n}]", f"{site} is the originating site (it gets it)")
        if site not in context.site_keys:
            raise ReportError(f"recipients[{n}]", f"no registered site {site}")


def _open(
    context: ServiceContext, reviewer: Reviewer, record: InstanceRecord, folder: Path
) -> Path:
    path = open_instance(context, reviewer, record)
    return path.replace(folder / f"{record.sop_instance_uid}.dcm")


def _publish(
    context: ServiceContext,
    reviewer: Reviewer,
    study_uid: str,
    report: Report,
    slot: ReportSlot,
    files: Mapping[str, Path],
    folder: Path,
) -> ReportRecord:
    content = report.to_json()
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{reviewer.name}\n{canonical}".encode()).hexdigest()[:16]
    version = slot.version
    sources = [dcmread(path, stop_before_pixels=True) for path in files.values()]
    previous = slot.previous
    document = build_report_sr(
        report,
        sources,
        reviewer=reviewer.name,
        organization=context.settings.report_organization,
        sop_instance_uid=generate_uid(entropy_srcs=[study_uid, "report", str(version), digest]),
        series_instance_uid=generate_uid(entropy_srcs=[study_uid, "usreview report series"]),
        version=version,
        previous=None if previous is None else _predecessor(study_uid, previous),
    )
    sr_path = folder / "report.dcm"
    document.save_as(sr_path, enforce_file_format=True)
    text_path = folder / "report.txt"
    patient = sources[0].get("PatientName")
    text_path.write_text(
        summary_text(
            report,
            reviewer=reviewer.name,
            version=version,
            study_instance_uid=study_uid,
            patient=str(patient) if patient else None,
        ),
        encoding="utf-8",
    )
    key = f"report/{study_uid}/{version}/{digest}"
    label = f"Report version {version} by {reviewer.name}"
    earlier = previous.results if previous is not None else {}

    def publish(path: Path, sites: list[str], kind: str, part: str, supersedes: int | None) -> int:
        record = publish_result(
            context.state,
            context.archive,
            study_uid,
            path,
            sites=sites,
            kind=kind,
            label=label if kind != "key-image" else f"Key image of {label.lower()}",
            supersedes=supersedes,
            actor=reviewer.name,
            audit=context.audit,
            key=f"{key}/{part}",
        )
        return record.cursor

    sites = [slot.site, *report.recipients]
    results: dict[str, object] = {
        "report": publish(sr_path, sites, "report", "report", earlier.get("report")),
        "summary": publish(text_path, sites, "report-summary", "summary", earlier.get("summary")),
        "key_images": [
            publish(files[uid], list(report.recipients), "key-image", f"key-image/{uid}", None)
            for uid in (report.key_images if report.recipients else ())
        ],
    }
    return context.archive.review.record_report(
        reviewer,
        study_uid,
        version,
        urgency=report.urgency.value,
        recipients=report.recipients,
        sop_instance_uid=str(document.SOPInstanceUID),
        series_instance_uid=str(document.SeriesInstanceUID),
        sop_class_uid=str(document.SOPClassUID),
        results=results,
        supersedes=earlier.get("report"),
        content=content,
    )


def _predecessor(study_uid: str, previous: ReportRecord) -> Dataset:
    dataset = Dataset()
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = previous.series_instance_uid
    dataset.SOPClassUID = previous.sop_class_uid
    dataset.SOPInstanceUID = previous.sop_instance_uid
    return dataset
