"""The review's records in the archive, on SQLite and on a real PostgreSQL server.

Header descriptions kept on studies, the worklist's aggregates, automatic analyses,
claims (one winner among concurrent claimers), report versions, and the upgrade of an
archive made before these columns existed.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.orm import Session

from tests.store_support import T0, StillClock, meta
from usreview.processing.recommendations.rules import RULES
from usreview.store import (
    Archive,
    InstanceMetadata,
    InvalidMetadataError,
    NotFoundError,
    Reviewer,
    StudyStatus,
)
from usreview.store.jobs import JobQueue, RetryPolicy
from usreview.store.records import Caller, header_fields
from usreview.store.review import (
    ClaimedError,
    NotClaimedError,
    NotReadyError,
    ReviewStore,
    VersionTakenError,
)
from usreview.store.review_schema import ReportRow
from usreview.store.worklist import ROUTINE_CATEGORIES, glance

SITE = "site-a"
STUDY = "1.2.826.0.2.1"
DR_X, DR_Y = Reviewer("dr-x"), Reviewer("dr-y")


@pytest.fixture
def clock() -> StillClock:
    return StillClock()


@pytest.fixture
def archive(db_url: str | None, tmp_path: Path, clock: StillClock) -> Iterator[Archive]:
    with Archive.open(db_url, tmp_path / "archive", clock=clock) as opened:
        yield opened


def described(n: int, *, study: int = 1, series: int = 1, **header: Any) -> InstanceMetadata:
    """Instance ``n`` with a header description."""
    base = meta(n, study=study, series=series)
    fields = {
        "patient_name": "DOE^JANE",
        "patient_id": "P-1",
        "study_date": "2026-02-27",
        "study_description": "Carotid duplex",
        "accession_number": "A-77",
        "manufacturer": "Acme",
        "model_name": "Sono 5",
        **header,
    }
    return InstanceMetadata(
        sop_instance_uid=base.sop_instance_uid,
        study_instance_uid=base.study_instance_uid,
        series_instance_uid=base.series_instance_uid,
        sop_class_uid=base.sop_class_uid,
        kinds=base.kinds,
        plaintext_sha256=base.plaintext_sha256,
        size=base.size,
        **fields,
    )


def processed(archive: Archive, *numbers: int, study: int = 1) -> None:
    """Store instances of a study and run their jobs to done."""
    for n in numbers:
        archive.put(SITE, f"envelope {n}".encode(), described(n, study=study))
    queue = archive.jobs
    while (lease := queue.claim("w", 60)) is not None:
        queue.complete(lease)


SUMMARY = {
    "sop_instance_uid": "1.2.826.0.1.1",
    "quantities": [],
    "findings": [
        {
            "code": "flow_direction",
            "text": "PW flow toward the probe (above the baseline); 3 complete cycle(s) traced.",
            "evidence": {},
            "processor": "doppler_indices",
        }
    ],
    "recommendations": [
        {
            "rule": "sru_ica_stenosis_psv",
            "category": "ica_50_69",
            "text": "Decision support...",
            "criterion": "...",
            "source": "Grant 2003",
            "evidence": [
                {"name": "peak_systolic_velocity", "meaning": "Peak Systolic Velocity",
                 "value": 182.4, "unit": "cm/s", "code": "11726-7", "scheme": "LN"}
            ],
            "processor": "vascular_rules",
        }
    ],
}  # fmt: skip


# -- header descriptions ----------------------------------------------------------------


def test_the_study_keeps_the_first_non_empty_description(archive: Archive) -> None:
    archive.put(SITE, b"e1", described(1, patient_name=None, accession_number=None))
    archive.put(SITE, b"e2", described(2, patient_name="DOE^JANE", patient_id="OTHER"))
    archive.put(SITE, b"e3", described(3, series=2, manufacturer="Other", model_name=None))
    entry = archive.review.entry(DR_X, STUDY)
    assert entry.patient_name == "DOE^JANE"  # first non-empty
    assert entry.patient_id == "P-1"  # the first instance's, not replaced
    assert entry.accession_number == "A-77"
    assert (entry.study_date, entry.study_description) == ("2026-02-27", "Carotid duplex")
    assert entry.patient_birth_date is None
    states = archive.review.instance_states(DR_X, STUDY)
    equipment = {(s.manufacturer, s.model_name) for s in states.values()}
    assert equipment == {("Acme", "Sono 5"), ("Other", None)}
    assert [k.value for k in entry.kinds] == ["bmode", "color_flow"]


def test_headers_are_read_tolerantly_and_checked_strictly() -> None:
    header = Dataset()
    with warnings.catch_warnings():  # what a messy scanner writes; pydicom warns on it
        warnings.simplefilter("ignore")
        header.PatientName = "DOE^JANE\x07" + "X" * 300
        header.PatientID = "  P-9  "
        header.PatientBirthDate = "19800231"  # no such day
        header.StudyDate = "20260227"
        header.StudyTime = "142530.123456789"
        header.StudyDescription = ""
        header.Manufacturer = "Acme"
    found = header_fields(header)
    assert found["patient_name"] is not None and len(found["patient_name"]) == 200
    assert "\x07" not in found["patient_name"]
    assert found["patient_id"] == "P-9"
    assert found["patient_birth_date"] is None
    assert (found["study_date"], found["study_time"]) == ("2026-02-27", "14:25:30.123456")
    assert found["study_description"] is None and found["model_name"] is None
    assert found["manufacturer"] == "Acme"
    assert described(1, **found).patient_name == found["patient_name"]
    for field, value, message in (
        ("study_date", "20260227", "YYYY-MM-DD"),
        ("study_time", "25:00", "HH:MM"),
        ("patient_id", "x" * 65, "at most 64"),
        ("patient_name", "A\x00B", "control"),
        ("patient_sex", " ", "non-empty"),
    ):
        with pytest.raises(InvalidMetadataError, match=message):
            described(1, **{field: value})


# -- analyses and the worklist ----------------------------------------------------------


def test_an_analysis_is_recorded_once_and_read_by_reviewers(archive: Archive) -> None:
    review = archive.review
    archive.put(SITE, b"e1", described(1))
    first = review.record_analysis("1.2.826.0.1.1", "sig-1", SUMMARY)
    again = review.record_analysis("1.2.826.0.1.1", "sig-1", b'{"other": true}')
    assert again == first  # a retried job: nothing recorded twice
    assert first.flagged and first.headlines == (
        "Peak Systolic Velocity 182 cm/s: ica 50 69",
        "PW flow toward the probe (above the baseline)",
    )
    assert review.analysis(DR_X, "1.2.826.0.1.1").summary == SUMMARY
    newer = review.record_analysis("1.2.826.0.1.1", "sig-2", {"findings": []})
    assert review.analysis(DR_X, "1.2.826.0.1.1") == newer  # the latest signature's
    with pytest.raises(NotFoundError):
        review.analysis(Reviewer("r", sites=frozenset({"site-b"})), "1.2.826.0.1.1")
    with pytest.raises(NotFoundError):
        review.analysis("site-b", "1.2.826.0.1.1")
    with pytest.raises(NotFoundError):
        review.record_analysis("1.2.826.0.1.99", "sig-1", SUMMARY)
    with pytest.raises(InvalidMetadataError):
        review.record_analysis("1.2.826.0.1.1", "sig-3", b"[1, 2]")
    with pytest.raises(InvalidMetadataError):
        review.record_analysis("1.2.826.0.1.1", "", SUMMARY)


def test_an_instance_stored_as_its_study_is_read_shows_its_processing(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study view lists the instances, then reads their jobs: one stored in between
    is listed with its job (read the other way, it was shown as processed with nothing to
    measure)."""
    from usreview.hub.api.handlers_review import _study_detail
    from usreview.review.results import processing_line

    archive.put(SITE, b"e1", described(1))
    listing = archive.list_instances

    def stored_then_listed(*args: Any, **kwargs: Any) -> Any:
        archive.put(SITE, b"e2", described(2))  # a site's upload commits just then
        return listing(*args, **kwargs)

    monkeypatch.setattr(archive, "list_instances", stored_then_listed)
    context = SimpleNamespace(archive=archive, site_keys=[SITE])
    detail = _study_detail(context, DR_X, STUDY)  # type: ignore[arg-type]
    shown = [instance for series in detail["series"] for instance in series["instances"]]
    assert len(shown) == 2
    assert [processing_line(i) for i in shown] == ["Automatic processing is queued."] * 2
    assert processing_line({"analysis": None}) == "Automatic processing: not known yet."


def test_instances_show_their_analysis_and_processing(archive: Archive, clock: StillClock) -> None:
    review = archive.review
    for n in (1, 2, 3):
        archive.put(SITE, f"e{n}".encode(), described(n))
    queue = JobQueue(archive, RetryPolicy(max_attempts=1))
    done = queue.claim("w", 60)
    failed = queue.claim("w", 60)
    assert done is not None and failed is not None
    queue.complete(done)
    queue.fail(failed, "boom")
    review.record_analysis(done.job.sop_instance_uid, "sig", SUMMARY)
    states = review.instance_states(DR_X, STUDY)
    assert states[done.job.sop_instance_uid].processing == "done"
    assert states[done.job.sop_instance_uid].analysis == SUMMARY
    assert states[failed.job.sop_instance_uid].processing == "failed"
    assert "boom" in (states[failed.job.sop_instance_uid].reason or "")
    waiting = states["1.2.826.0.1.3"]
    assert (waiting.processing, waiting.analysis, waiting.reason) == ("queued", None, None)
    assert review.instance_states("site-b", STUDY) == {}
    entry = review.entry(DR_X, STUDY)
    assert (entry.failed_jobs, entry.instances, entry.urgency) == (1, 3, "urgent")
    assert entry.findings[0].startswith("Peak Systolic Velocity")


def test_urgency_follows_processing_analyses_and_reports(
    archive: Archive, clock: StillClock
) -> None:
    review = archive.review
    archive.put(SITE, b"e1", described(1))
    assert review.entry(DR_X, STUDY).urgency is None  # not analysed yet
    processed(archive)
    assert review.entry(DR_X, STUDY).urgency == "routine"  # processed, nothing flagged
    review.record_analysis("1.2.826.0.1.1", "sig", {"recommendations": [
        {"category": "ica_below_50", "evidence": []}]})  # fmt: skip
    assert review.entry(DR_X, STUDY).urgency == "routine"
    review.record_analysis("1.2.826.0.1.1", "sig-2", {"findings": [
        {"text": "Abnormal flow", "abnormal": True}]})  # fmt: skip
    assert review.entry(DR_X, STUDY).urgency == "urgent"
    publish(review, DR_X, 1, urgency="critical")
    entry = review.entry(DR_X, STUDY)
    assert (entry.urgency, entry.reports, entry.status) == ("critical", 1, StudyStatus.PUBLISHED)


def test_the_worklist_lists_newest_first_and_filters(archive: Archive, clock: StillClock) -> None:
    review = archive.review
    archive.put(SITE, b"e1", described(1, study=1))
    clock.advance(1)
    archive.put("site-b", b"e2", described(2, study=2))
    clock.advance(1)
    archive.put(SITE, b"e3", described(3, study=3))
    everything = review.worklist(DR_X)
    assert [e.study_instance_uid[-1] for e in everything] == ["3", "2", "1"]
    assert [e.study_instance_uid[-1] for e in review.worklist(DR_X, site="site-b")] == ["2"]
    assert review.worklist(DR_X, status="processed") == []
    assert [e.site for e in review.worklist(SITE)] == [SITE, SITE]
    only_b = Reviewer("r", sites=frozenset({"site-b"}))
    assert [e.site for e in review.worklist(only_b)] == ["site-b"]
    with pytest.raises(NotFoundError):
        review.entry(only_b, STUDY)


def test_priors_are_the_patients_other_studies_at_the_same_site(
    archive: Archive, clock: StillClock
) -> None:
    review = archive.review
    born = {"patient_birth_date": "1950-04-01"}
    for n, site, header in (
        (1, SITE, born),  # the study read (P-1, dated 2026-02-27)
        (2, SITE, {"study_date": "2025-06-01"}),  # no birth date: may be the same patient
        (3, SITE, {"study_date": "2024-01-10", **born}),  # received later, dated earlier
        (4, SITE, {"patient_birth_date": "1961-09-09"}),  # another patient with the same ID
        (5, "site-b", born),  # the same ID at another site: another patient
        (6, SITE, {"patient_id": "P-2", **born}),
        (7, SITE, {"patient_id": None}),
    ):
        archive.put(site, f"e{n}".encode(), described(n, study=n, **header))
        clock.advance(1)

    def priors(caller: Caller, study: int) -> list[int]:
        found = review.priors(caller, f"1.2.826.0.2.{study}")
        return [int(e.study_instance_uid.rsplit(".", 1)[1]) for e in found]

    assert priors(DR_X, 1) == [2, 3]  # newest first by study date, itself left out
    assert priors(DR_X, 3) == [1, 2]
    assert priors(DR_X, 4) == [2]  # only the study without a birth date
    assert priors(DR_X, 2) == [4, 1, 3]  # ties by date: the newest received first
    assert priors(DR_X, 5) == priors(DR_X, 6) == priors(DR_X, 7) == []
    assert priors(Reviewer("r", sites=frozenset({SITE})), 1) == [2, 3]
    assert priors(SITE, 1) == [2, 3]
    only_b = Reviewer("r", sites=frozenset({"site-b"}))
    assert priors(only_b, 5) == []
    for caller, study in ((only_b, 1), ("site-b", 1), (DR_X, 99)):
        with pytest.raises(NotFoundError, match=rf"no study 1\.2\.826\.0\.2\.{study}"):
            priors(caller, study)


def test_glance_reads_flags_and_categories() -> None:
    assert glance({}) == (False, [])
    assert glance({"findings": "not a list", "recommendations": [1, None]}) == (False, [])
    flagged, lines = glance({"findings": [{"text": "a; b", "urgency": "critical"}] * 5})
    assert flagged and lines == ["a"]
    many = {"findings": [{"text": f"finding {n}"} for n in range(5)]}
    assert glance(many) == (False, ["finding 0", "finding 1", "finding 2"])
    # Every band of the published rules is knowingly routine or flagged.
    normal = {b.category for r in RULES for b in r.bands if b.statement.startswith("normal")}
    assert normal == ROUTINE_CATEGORIES


# -- claims -------------------------------------------------------------------------------


def test_a_claim_is_held_renewed_released_and_expires(archive: Archive, clock: StillClock) -> None:
    review = archive.review
    processed(archive, 1)
    claim = review.claim(DR_X, STUDY, seconds=1200)
    assert (claim.reviewer, claim.expires_at) == ("dr-x", T0 + timedelta(seconds=1200))
    assert archive.study(DR_X, STUDY).status is StudyStatus.IN_REVIEW
    clock.advance(600)
    renewed = review.claim(DR_X, STUDY, seconds=1200)
    assert renewed.claimed_at == T0 and renewed.expires_at == clock.now + timedelta(seconds=1200)
    with pytest.raises(ClaimedError, match="claimed by dr-x until 2026-03-01T08:30:00Z") as taken:
        review.claim(DR_Y, STUDY, seconds=1200)
    assert taken.value.claim == renewed
    with pytest.raises(ClaimedError):
        review.release(DR_Y, STUDY)
    assert review.entry(DR_Y, STUDY).claim == renewed
    clock.advance(1201)  # expired: free for anybody
    assert review.entry(DR_Y, STUDY).claim is None
    assert review.claim(DR_Y, STUDY, seconds=60).reviewer == "dr-y"
    assert review.release(DR_X, STUDY, force=True) is not None  # an administrator
    assert archive.study(DR_X, STUDY).status is StudyStatus.PROCESSED
    assert review.release(DR_X, STUDY) is None  # nothing held: nothing to do
    history = [(h.status, h.actor) for h in archive.history(DR_X, STUDY)][-3:]
    assert history == [
        (StudyStatus.PROCESSED, "processing"),
        (StudyStatus.IN_REVIEW, "dr-x"),
        (StudyStatus.PROCESSED, "dr-x"),
    ]


def test_a_study_still_processing_is_claimed_but_keeps_its_status(archive: Archive) -> None:
    review = archive.review
    archive.put(SITE, b"e1", described(1))
    review.claim(DR_X, STUDY, seconds=600)
    assert archive.study(DR_X, STUDY).status is StudyStatus.RECEIVED
    with pytest.raises(NotReadyError, match="still being processed"):
        review.report_slot(DR_X, STUDY)
    queue = archive.jobs
    lease = queue.claim("w", 60)
    assert lease is not None
    queue.complete(lease)
    assert archive.study(DR_X, STUDY).status is StudyStatus.PROCESSED
    assert review.report_slot(DR_X, STUDY).version == 1


def test_sites_never_claim_and_missing_studies_are_not_found(archive: Archive) -> None:
    review = archive.review
    processed(archive, 1)
    for call in (
        lambda: review.claim(SITE, STUDY, seconds=60),
        lambda: review.release(SITE, STUDY),
        lambda: review.report_slot(SITE, STUDY),
        lambda: review.claim(DR_X, "1.2.3.4", seconds=60),
        lambda: review.claim(Reviewer("r", sites=frozenset({"site-b"})), STUDY, seconds=60),
    ):
        with pytest.raises(NotFoundError):
            call()


def test_of_concurrent_claims_exactly_one_wins(archive: Archive) -> None:
    processed(archive, 1)
    review: ReviewStore = archive.review
    barrier = threading.Barrier(8)
    won: list[str] = []
    lost: list[str] = []

    def claim(name: str) -> None:
        barrier.wait()
        try:
            won.append(review.claim(Reviewer(name), STUDY, seconds=600).reviewer)
        except ClaimedError as exc:
            lost.append(exc.claim.reviewer)

    threads = [threading.Thread(target=claim, args=(f"dr-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(won) == 1 and len(lost) == 7
    assert set(lost) == set(won)  # everybody else was told who won
    assert review.entry(DR_X, STUDY).claim is not None
    assert review.entry(DR_X, STUDY).claim.reviewer == won[0]  # type: ignore[union-attr]


# -- reports ------------------------------------------------------------------------------


def publish(review: ReviewStore, reviewer: Reviewer, version: int, urgency: str = "routine") -> Any:
    """Claim and record a report version as the service does."""
    review.claim(reviewer, STUDY, seconds=600)
    slot = review.report_slot(reviewer, STUDY)
    assert slot.version == version
    return review.record_report(
        reviewer,
        STUDY,
        slot.version,
        urgency=urgency,
        recipients=["site-c"],
        sop_instance_uid=f"1.2.826.0.9.{version}",
        series_instance_uid="1.2.826.0.9",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
        results={"report": 10 * version, "summary": 10 * version + 1, "key_images": []},
        supersedes=slot.previous.results["report"] if slot.previous else None,
        content={"impression": f"version {version}"},
    )


def test_reports_are_versioned_published_and_never_changed(
    archive: Archive, clock: StillClock
) -> None:
    review = archive.review
    processed(archive, 1)
    with pytest.raises(NotClaimedError):
        review.report_slot(DR_X, STUDY)
    review.claim(DR_Y, STUDY, seconds=600)
    with pytest.raises(ClaimedError):
        review.report_slot(DR_X, STUDY)
    review.release(DR_Y, STUDY)
    first = publish(review, DR_X, 1)
    assert (first.version, first.supersedes, first.cursors) == (1, None, [10, 11])
    assert archive.study(DR_X, STUDY).status is StudyStatus.PUBLISHED
    assert review.entry(DR_X, STUDY).claim is None  # released by publishing
    clock.advance(60)
    second = publish(review, DR_Y, 2, urgency="urgent")  # an amendment by another reviewer
    assert second.supersedes == 10 and second.reviewer == "dr-y"
    assert archive.study(DR_X, STUDY).status is StudyStatus.PUBLISHED
    assert [r.version for r in review.reports(DR_X, STUDY)] == [1, 2]
    assert review.reports(DR_X, STUDY)[0] == first
    with pytest.raises(NotFoundError):
        review.reports("site-b", STUDY)
    review.claim(DR_X, STUDY, seconds=600)
    with pytest.raises(VersionTakenError):
        review.record_report(
            DR_X,
            STUDY,
            2,
            urgency="routine",
            recipients=[],
            sop_instance_uid="1.2.826.0.9.99",
            series_instance_uid="1.2.826.0.9",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
            results={},
            supersedes=None,
            content={},
        )
    with Session(archive._engine) as session:
        row = session.scalars(select(ReportRow).where(ReportRow.version == 1)).one()
        row.urgency = "critical"
        with pytest.raises(ValueError, match="never changed"):
            session.flush()


def test_a_study_whose_processing_failed_is_reviewed_and_goes_back_failed(
    archive: Archive,
) -> None:
    review = archive.review
    archive.put(SITE, b"e1", described(1))
    queue = JobQueue(archive, RetryPolicy(max_attempts=1))
    lease = queue.claim("w", 60)
    assert lease is not None
    queue.fail(lease, "boom")
    assert archive.study(DR_X, STUDY).status is StudyStatus.FAILED
    review.claim(DR_X, STUDY, seconds=600)
    assert archive.study(DR_X, STUDY).status is StudyStatus.IN_REVIEW
    assert review.report_slot(DR_X, STUDY).version == 1  # the reviewer reports what they see
    review.release(DR_X, STUDY)
    assert archive.study(DR_X, STUDY).status is StudyStatus.FAILED  # still failed, visibly


# -- upgrading an older archive ---------------------------------------------------------


def test_an_archive_made_before_the_review_columns_is_upgraded(
    db_url: str | None,
    tmp_path: Path,
) -> None:
    root = tmp_path / "old"
    with Archive.open(db_url, root) as archive:
        archive.put(SITE, b"e1", described(1))
        archive.put(SITE, b"e2", described(2, series=2))
    url = db_url or f"sqlite:///{root / 'index.sqlite3'}"
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as connection:
            for column in ("kinds", "patient_name", "study_date"):
                connection.execute(text(f'ALTER TABLE studies DROP COLUMN "{column}"'))
            connection.execute(text('ALTER TABLE series DROP COLUMN "manufacturer"'))
            connection.execute(text("DROP INDEX ix_studies_site_patient"))
            connection.execute(text('ALTER TABLE teaching_cases DROP COLUMN "measurements"'))
        assert "kinds" not in {c["name"] for c in inspect(engine).get_columns("studies")}
    finally:
        engine.dispose()
    with Archive.open(db_url, root) as archive:
        entry = archive.review.entry(DR_X, STUDY)
        assert [k.value for k in entry.kinds] == ["bmode", "color_flow"]  # filled in
        assert entry.patient_name is None and entry.patient_id == "P-1"
        archive.put(SITE, b"e3", described(3))
        assert archive.review.entry(DR_X, STUDY).patient_name == "DOE^JANE"
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:  # an upgrade stopped after adding the column, before filling it: finished now
        with engine.begin() as connection:
            connection.execute(text("UPDATE studies SET kinds = NULL"))
    finally:
        engine.dispose()
    with Archive.open(db_url, root) as archive:
        entry = archive.review.entry(DR_X, STUDY)
        assert [k.value for k in entry.kinds] == ["bmode", "color_flow"]
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:  # the priors' index is made again
        indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("studies")}
        assert indexes["ix_studies_site_patient"] == ["site_id", "patient_id"]
        columns = {c["name"] for c in inspect(engine).get_columns("teaching_cases")}
        assert "measurements" in columns  # cases made before it read as having none
    finally:
        engine.dispose()
