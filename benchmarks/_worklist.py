"""A synthetic worklist at scale: thousands of studies from dozens of sites, in seconds.

:func:`fill` writes a realistic archive index directly through the archive's tables (a
few seconds for 5,000 studies, where storing envelopes one by one would take minutes):
studies with header descriptions, instances, their jobs in every state, analyses (some
flagged), claims (some expired) and published reports. The worklist tests and the review
benchmark use it. No envelope is written: the studies can be listed, not opened.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from usreview.store import Archive
from usreview.store.database import writer
from usreview.store.jobs_schema import JobRow, JobStatus
from usreview.store.review_schema import AnalysisRow, ClaimRow, ReportRow
from usreview.store.schema import InstanceRow, SeriesRow, SiteRow, StudyRow
from usreview.store.status import StudyStatus

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
FLAGGED = {
    "recommendations": [
        {
            "rule": "sru_ica_stenosis_psv",
            "category": "ica_70_or_more",
            "evidence": [{"meaning": "Peak Systolic Velocity", "value": 260.0, "unit": "cm/s"}],
        }
    ]
}
ROUTINE = {"findings": [{"code": "flow_direction", "text": "PW flow toward the probe"}]}


@dataclass(frozen=True)
class Filled:
    """What :func:`fill` wrote, to check the worklist against."""

    studies: int
    sites: int
    prefix: str
    failed: set[str]
    flagged: set[str]
    claimed: dict[str, str]
    reported: dict[str, str]


def fill(archive: Archive, *, studies: int = 5000, sites: int = 60, now: datetime = T0) -> Filled:
    """Write ``studies`` studies of ``sites`` sites (two instances each) into the index."""
    prefix = f"1.2.826.0.77.{time.monotonic_ns() % 10**9}"
    engine: Engine = archive._engine
    rows: dict[str, list[dict[str, object]]] = {
        k: [] for k in ("sites", "studies", "series", "instances", "jobs", "analyses")
    }
    claims: list[dict[str, object]] = []
    reports: list[dict[str, object]] = []
    failed: set[str] = set()
    flagged: set[str] = set()
    claimed: dict[str, str] = {}
    reported: dict[str, str] = {}
    token = secrets.token_hex(3)
    with Session(writer(engine)) as session, session.begin():
        names = [f"bulk{token}-{n:02d}" for n in range(sites)]
        site_ids = {}
        for name in names:
            site = SiteRow(name=name, created_at=now)
            session.add(site)
            session.flush()
            site_ids[name] = site.id
        # Far above the ids in use, and above what PostgreSQL's sequences will hand out.
        study_base = (session.scalar(select(func.max(StudyRow.id))) or 0) + 1_000_000
        instance_base = (session.scalar(select(func.max(InstanceRow.id))) or 0) + 1_000_000
        for n in range(studies):
            study_id = study_base + n
            uid = f"{prefix}.{n}"
            site_id = site_ids[names[n % sites]]
            created = now - timedelta(seconds=studies - n)
            status = [StudyStatus.RECEIVED, StudyStatus.PROCESSED, StudyStatus.IN_REVIEW][n % 3]
            rows["studies"].append(
                {
                    "id": study_id,
                    "site_id": site_id,
                    "study_instance_uid": uid,
                    "status": status,
                    "status_changed_at": created,
                    "created_at": created,
                    "kinds": ["bmode", "pw_doppler"] if n % 2 else ["bmode"],
                    "patient_name": f"PATIENT^{n}",
                    "patient_id": f"ID{n}",
                    "study_date": "2026-02-27",
                    "study_description": "Carotid duplex",
                    "accession_number": f"ACC{n}",
                }
            )
            rows["series"].append(
                {
                    "id": study_id,
                    "study_id": study_id,
                    "series_instance_uid": f"{uid}.1",
                    "created_at": created,
                }
            )
            for k in range(2):
                instance_id = instance_base + 2 * n + k
                digest = hashlib.sha256(f"{uid}.{k}".encode()).hexdigest()
                rows["instances"].append(
                    {
                        "id": instance_id,
                        "site_id": site_id,
                        "study_id": study_id,
                        "series_id": study_id,
                        "sop_instance_uid": f"{uid}.1.{k}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.6.1",
                        "kinds": ["bmode"],
                        "plaintext_sha256": digest,
                        "size": 1000,
                        "envelope_sha256": digest,
                        "envelope_size": 1100,
                        "object_key": f"objects/{digest[:2]}/{digest}",
                        "received_at": created,
                    }
                )
                # Running without a lease: a live hub's worker leaves these jobs alone.
                job_status = JobStatus.DONE if status is not StudyStatus.RECEIVED else (
                    JobStatus.FAILED if n % 7 == 0 and k == 0 else JobStatus.RUNNING
                )  # fmt: skip
                if job_status is JobStatus.FAILED:
                    failed.add(uid)
                rows["jobs"].append(
                    {
                        "instance_id": instance_id,
                        "study_id": study_id,
                        "status": job_status,
                        "attempts": 1,
                        "available_at": created,
                        "created_at": created,
                        "last_error": "boom" if job_status is JobStatus.FAILED else None,
                    }
                )
                if job_status is JobStatus.DONE and k == 0:
                    summary = FLAGGED if n % 5 == 0 else ROUTINE
                    if summary is FLAGGED:
                        flagged.add(uid)
                    rows["analyses"].append(
                        {
                            "instance_id": instance_id,
                            "study_id": study_id,
                            "signature": "bulk",
                            "summary": summary,
                            "flagged": summary is FLAGGED,
                            "headlines": (
                                ["Peak Systolic Velocity 260 cm/s: ica 70 or more"]
                                if summary is FLAGGED
                                else ["PW flow toward the probe"]
                            ),
                            "created_at": created,
                        }
                    )
            if status is StudyStatus.IN_REVIEW:
                expires = now + timedelta(minutes=10 if n % 2 else -10)  # some expired
                if n % 2:
                    claimed[uid] = f"dr-{n % 4}"
                claims.append(
                    {
                        "study_id": study_id,
                        "reviewer": f"dr-{n % 4}",
                        "claimed_at": created,
                        "expires_at": expires,
                    }
                )
            if status is StudyStatus.PROCESSED and n % 4 == 1:
                reported[uid] = "critical"
                for version, urgency in ((1, "routine"), (2, "critical")):
                    reports.append(
                        {
                            "study_id": study_id,
                            "version": version,
                            "reviewer": "dr-0",
                            "published_at": created,
                            "urgency": urgency,
                            "recipients": [],
                            "sop_instance_uid": f"{uid}.9.{version}",
                            "series_instance_uid": f"{uid}.9",
                            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.33",
                            "results": {"report": version},
                            "supersedes": None,
                            "content": {"impression": "x"},
                        }
                    )
        for table, model in (
            ("studies", StudyRow),
            ("series", SeriesRow),
            ("instances", InstanceRow),
            ("jobs", JobRow),
            ("analyses", AnalysisRow),
        ):
            session.execute(insert(model), rows[table])
        if claims:
            session.execute(insert(ClaimRow), claims)
        if reports:
            session.execute(insert(ReportRow), reports)
    return Filled(studies, sites, prefix, failed, flagged, claimed, reported)
