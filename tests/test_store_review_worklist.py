"""The worklist at scale: thousands of studies from dozens of sites, read in a few queries.

The archive index is filled by :func:`benchmarks._worklist.fill` (shared with the review
benchmark); the API test measures the service's answer on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from benchmarks._worklist import T0, Filled, fill
from usreview.store import Archive, Reviewer
from usreview.store.status import StudyStatus


@pytest.fixture
def archive(db_url: str | None, tmp_path: Path) -> Iterator[Archive]:
    with Archive.open(db_url, tmp_path / "archive", clock=lambda: T0) as opened:
        yield opened


def check(archive: Archive, filled: Filled) -> None:
    """The worklist shows what :func:`fill` wrote, study by study."""
    entries = [
        e
        for e in archive.review.worklist(Reviewer("dr-x"))
        if e.study_instance_uid.startswith(filled.prefix + ".")
    ]
    assert len(entries) == filled.studies
    assert len({e.site for e in entries}) == filled.sites
    assert entries[0].study_instance_uid == f"{filled.prefix}.{filled.studies - 1}"  # newest
    for entry in entries:
        uid = entry.study_instance_uid
        n = int(uid.rsplit(".", 1)[1])
        assert (entry.instances, entry.series) == (2, 1)
        assert entry.patient_name == f"PATIENT^{n}" and entry.accession_number == f"ACC{n}"
        assert entry.failed_jobs == (1 if uid in filled.failed else 0)
        if uid in filled.reported:
            assert (entry.urgency, entry.reports) == ("critical", 2)
        elif uid in filled.flagged:
            assert entry.urgency == "urgent" and "ica 70 or more" in entry.findings[0]
        elif entry.status is StudyStatus.RECEIVED:
            assert entry.urgency is None and entry.findings == ()
        else:
            assert entry.urgency == "routine" and entry.findings == ("PW flow toward the probe",)
        claim = filled.claimed.get(uid)
        assert (entry.claim.reviewer if entry.claim else None) == claim


def test_the_worklist_aggregates_every_study_correctly(archive: Archive) -> None:
    check(archive, fill(archive, studies=600, sites=12))


@pytest.mark.slow
def test_the_worklist_of_5000_studies_from_60_sites(archive: Archive) -> None:
    filled = fill(archive)
    queries: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        queries.append(statement)

    engine = archive._engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        started = time.perf_counter()
        entries = archive.review.worklist(Reviewer("dr-x"))
        seconds = time.perf_counter() - started
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(entries) == 5000
    assert len([q for q in queries if q.lstrip().upper().startswith("SELECT")]) == 2
    print(f"\nworklist of 5000 studies ({engine.dialect.name}): {seconds * 1000:.0f} ms")
    check(archive, filled)
