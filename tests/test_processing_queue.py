"""The durable processing queue, on SQLite and on a real PostgreSQL server.

Claims, leases and their expiry, retries with exponential backoff, failing for good (the
study shows it), concurrent claims, and idempotent publication of results.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.store_support import T0, StillClock, meta
from usreview.store import Archive, Reviewer, StudyStatus
from usreview.store.errors import InvalidTransitionError, NotFoundError
from usreview.store.jobs import JobQueue, JobStatus, LeaseLostError, RetryPolicy

SITE = "site-a"


@pytest.fixture
def clock() -> StillClock:
    return StillClock()


@pytest.fixture
def archive(db_url: str | None, tmp_path: Path, clock: StillClock) -> Iterator[Archive]:
    with Archive.open(db_url, tmp_path / "archive", clock=clock) as opened:
        yield opened


def queue(archive: Archive, attempts: int = 3) -> JobQueue:
    return JobQueue(archive, RetryPolicy(max_attempts=attempts, initial=10.0, maximum=15.0))


def store(archive: Archive, *numbers: int, study: int = 1) -> None:
    for n in numbers:
        archive.put(SITE, f"envelope {n}".encode(), meta(n, study=study))


def study_of(archive: Archive, study: int = 1) -> tuple[StudyStatus, str | None]:
    record = archive.study(Reviewer("r"), f"1.2.826.0.2.{study}")
    return record.status, record.reason


def test_every_stored_instance_gets_one_job(archive: Archive) -> None:
    store(archive, 1, 2)
    archive.put(SITE, b"envelope 1", meta(1))  # a duplicate: no second job
    jobs = archive.jobs.list_jobs()
    assert [(j.sop_instance_uid, j.status, j.attempts) for j in jobs] == [
        ("1.2.826.0.1.1", JobStatus.PENDING, 0),
        ("1.2.826.0.1.2", JobStatus.PENDING, 0),
    ]
    assert {j.site for j in jobs} == {SITE}
    assert archive.jobs.counts()[JobStatus.PENDING] == 2


def test_claims_take_the_oldest_ready_job_once(archive: Archive) -> None:
    store(archive, 1, 2)
    q = queue(archive)
    first = q.claim("w1", 30)
    second = q.claim("w2", 30)
    assert first is not None and second is not None
    assert (first.job.sop_instance_uid, second.job.sop_instance_uid) == (
        "1.2.826.0.1.1",
        "1.2.826.0.1.2",
    )
    assert first.job.status is JobStatus.RUNNING and first.job.attempts == 1
    assert first.job.lease_owner == "w1" and first.expires_at == T0 + timedelta(seconds=30)
    assert q.claim("w3", 30) is None


def test_an_expired_lease_lets_another_worker_take_the_job(
    archive: Archive, clock: StillClock
) -> None:
    store(archive, 1)
    q = queue(archive)
    lost = q.claim("w1", 10)
    assert lost is not None
    clock.advance(8)
    lost = q.renew(lost, 10)  # held until T0 + 18
    clock.advance(9)
    assert q.claim("w2", 10) is None
    clock.advance(2)
    taken = q.claim("w2", 10)
    assert taken is not None and taken.job.id == lost.job.id and taken.job.attempts == 2
    for late in (lambda: q.renew(lost, 10), lambda: q.complete(lost), lambda: q.fail(lost, "x")):
        with pytest.raises(LeaseLostError, match="no longer held"):
            late()
    done = q.complete(taken)
    assert done.status is JobStatus.DONE and done.finished_at == clock.now
    with pytest.raises(LeaseLostError):
        q.complete(taken)  # finishes once
    assert study_of(archive) == (StudyStatus.PROCESSED, "automatic processing done")


def test_failures_back_off_exponentially_then_fail_the_study(
    archive: Archive, clock: StillClock
) -> None:
    store(archive, 1)
    q = queue(archive, attempts=3)
    waits = []
    for attempt in (1, 2):
        lease = q.claim("w", 30)
        assert lease is not None and lease.job.attempts == attempt
        record = q.fail(lease, f"boom {attempt}")
        assert record.status is JobStatus.PENDING and record.last_error == f"boom {attempt}"
        waits.append((record.available_at - clock.now).total_seconds())
        clock.advance(waits[-1] - 1)
        assert q.claim("w", 30) is None  # not before its backoff
        clock.advance(1)
    assert waits == [10.0, 15.0]  # 10 * 2**(n-1), capped at 15
    lease = q.claim("w", 30)
    assert lease is not None
    record = q.fail(lease, "boom 3")
    assert record.status is JobStatus.FAILED and "failed 3 times, last: boom 3" in (
        record.last_error or ""
    )
    assert q.claim("w", 30) is None
    status, reason = study_of(archive)
    assert status is StudyStatus.FAILED
    assert reason is not None and "1.2.826.0.1.1" in reason and "boom 3" in reason
    assert archive.history(Reviewer("r"), "1.2.826.0.2.1")[-1].actor == "processing"
    assert [j.id for j in q.list_jobs(status="failed")] == [lease.job.id]


def test_a_job_whose_workers_keep_dying_is_failed(archive: Archive, clock: StillClock) -> None:
    store(archive, 1)
    q = queue(archive, attempts=2)
    for _ in range(2):
        assert q.claim("doomed", 10) is not None
        clock.advance(11)  # the worker died: its lease expires
    assert q.claim("w", 10) is None
    [job] = q.list_jobs()
    assert job.status is JobStatus.FAILED and "stopped answering 2 times" in (job.last_error or "")
    assert study_of(archive)[0] is StudyStatus.FAILED


def test_retry_requeues_a_failed_job_and_its_study(archive: Archive, clock: StillClock) -> None:
    store(archive, 1, 2)
    q = queue(archive, attempts=1)
    first = q.claim("w", 30)
    assert first is not None
    failed = q.fail(first, "boom")
    assert failed.status is JobStatus.FAILED and study_of(archive)[0] is StudyStatus.FAILED
    with pytest.raises(InvalidTransitionError, match="only a failed job"):
        q.retry(failed.id + 1)  # pending
    with pytest.raises(NotFoundError):
        q.retry(999)
    clock.advance(5)
    again = q.retry(failed.id, actor="alice")
    assert (again.status, again.attempts, again.available_at, again.finished_at) == (
        JobStatus.PENDING,
        0,
        clock.now,
        None,
    )
    assert "boom" in (again.last_error or "")  # the last reason stays until it runs again
    assert study_of(archive) == (StudyStatus.RECEIVED, f"job {failed.id} retried")
    assert archive.history(Reviewer("r"), "1.2.826.0.2.1")[-1].actor == "alice"
    with pytest.raises(InvalidTransitionError):
        q.retry(failed.id)  # pending now: nothing to retry
    leases = [q.claim("w", 30), q.claim("w", 30)]  # the retried job is taken like any other
    assert sorted(lease.job.id for lease in leases if lease) == [failed.id, failed.id + 1]
    for lease in leases:
        assert lease is not None
        q.complete(lease)
    assert study_of(archive)[0] is StudyStatus.PROCESSED


def test_the_study_is_processed_when_all_its_jobs_are_done(archive: Archive) -> None:
    store(archive, 1, 2)
    q = queue(archive)
    one, two = q.claim("w", 30), q.claim("w", 30)
    assert one is not None and two is not None
    q.complete(one)
    assert study_of(archive)[0] is StudyStatus.RECEIVED
    q.complete(two)
    assert study_of(archive)[0] is StudyStatus.PROCESSED
    store(archive, 3)  # a new instance: received again, processed again after its job
    assert study_of(archive)[0] is StudyStatus.RECEIVED
    three = q.claim("w", 30)
    assert three is not None
    q.complete(three, problem="applying processor x to instance 3: ValueError: bad")
    assert study_of(archive) == (
        StudyStatus.FAILED,
        "applying processor x to instance 3: ValueError: bad",
    )


def test_release_gives_the_job_back_untried(archive: Archive) -> None:
    store(archive, 1)
    q = queue(archive)
    lease = q.claim("w", 30)
    assert lease is not None
    q.release(lease)
    again = q.claim("w", 30)
    assert again is not None and again.job.attempts == 1


def test_concurrent_claims_take_each_job_once(archive: Archive) -> None:
    store(archive, *range(1, 25))
    q = queue(archive)
    taken: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (lease := q.claim(name, 30)) is not None:
            with lock:
                taken.append(lease.job.id)
            q.complete(lease)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == [j.id for j in q.list_jobs()] and len(set(taken)) == 24
    assert q.counts()[JobStatus.DONE] == 24


def test_publishing_under_a_key_is_idempotent(archive: Archive) -> None:
    store(archive, 1)
    feed = archive.results
    first = feed.publish_result(
        b"sealed 1", sites=[SITE], study_instance_uid="1.2.826.0.2.1", kind="sr", key="k/1"
    )
    again = feed.publish_result(
        b"sealed 2", sites=[SITE], study_instance_uid="1.2.826.0.2.1", kind="sr", key="k/1"
    )
    assert again == first and feed.find_result("k/1") == first
    assert [r.cursor for r in feed.results_since(SITE)] == [first.cursor]
    other = feed.publish_result(
        b"sealed 3", sites=[SITE], study_instance_uid="1.2.826.0.2.1", kind="sr", key="k/2"
    )
    assert other.cursor > first.cursor and feed.find_result("nope") is None


def test_reprocess_queues_a_finished_job_again(archive: Archive, clock: StillClock) -> None:
    store(archive, 1)
    q = queue(archive)
    lease = q.claim("w", 30)
    assert lease is not None
    with pytest.raises(InvalidTransitionError, match="only a done or failed job"):
        q.reprocess(lease.job.id)  # running
    done = q.complete(lease)
    assert study_of(archive)[0] is StudyStatus.PROCESSED
    clock.advance(5)
    again = q.reprocess(done.id, actor="alice")
    assert (again.status, again.attempts, again.finished_at) == (JobStatus.PENDING, 0, None)
    assert study_of(archive) == (StudyStatus.RECEIVED, f"job {done.id} queued again")
    lease = q.claim("w", 30)
    assert lease is not None and lease.job.id == done.id
    q.complete(lease)
    assert study_of(archive)[0] is StudyStatus.PROCESSED
    with pytest.raises(NotFoundError):
        q.reprocess(999)


def test_a_job_keeps_the_processors_of_its_last_run(
    archive: Archive,
    db_url: str | None,
    tmp_path: Path,
    clock: StillClock,
) -> None:
    from sqlalchemy import text

    store(archive, 1, 2)
    q = queue(archive)
    first, second = q.claim("w", 30), q.claim("w", 30)
    assert first is not None and second is not None
    done = q.complete(first, processors=["speckle_obnlm=1.0", "speckle_fast=1.0"])
    assert done.processors == ("speckle_fast=1.0", "speckle_obnlm=1.0")
    assert q.complete(second).processors is None  # the task did not say
    q.reprocess(done.id)
    assert q.get(done.id).processors == done.processors  # until the next run says otherwise
    lease = q.claim("w", 30)
    assert lease is not None
    assert q.complete(lease, processors=["speckle_obnlm=1.1"]).processors == ("speckle_obnlm=1.1",)

    # An archive made before the column: opening it adds the column, its jobs say None.
    with archive._engine.begin() as connection:
        connection.execute(text('ALTER TABLE processing_jobs DROP COLUMN "processors"'))
    with Archive.open(db_url, tmp_path / "archive", clock=clock) as reopened:
        assert [job.processors for job in reopened.jobs.list_jobs()] == [None, None]
