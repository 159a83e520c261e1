"""A real worker process killed with SIGKILL mid-job, again and again, loses nothing.

Each round starts ``python -m usreview.processing.worker`` (with a task that sleeps before
running the pipeline), waits until it holds a job, and kills its whole process group.
A last worker then finishes the queue: every job is done exactly once, and the site's feed
holds exactly one SR, one summary and one derived image (the Doppler overlay) per job.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.processing_queue_support import (
    SLOW_TASK,
    HubSetup,
    assert_all_done_once,
    feed_kinds,
    ingest,
    simulate_pw,
)
from usreview.ingest import WorkerPool
from usreview.store import Archive, Reviewer, StudyStatus
from usreview.store.jobs import JobStatus

REPO = Path(__file__).resolve().parents[1]
JOBS = 6
LEASE = 2.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(1, timeout=30) as started:
        yield started


def start_worker(setup: HubSetup, log: Path) -> subprocess.Popen[bytes]:
    # -X faulthandler: a worker that hangs is sent SIGABRT and prints its threads' stacks.
    command = [sys.executable, "-X", "faulthandler", "-m", "usreview.processing.worker", "--state",
               str(setup.state.root), "--processes", "1", "--lease", str(LEASE), "--poll",
               "0.1", "--task", SLOW_TASK]  # fmt: skip
    env = {**os.environ, "USREVIEW_TEST_TASK_SLEEP": "0.7"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True
        )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the worker and its pool: by the group we started
    process.wait(10)


def stop(process: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> int:
    """SIGTERM, then its exit code; a worker still running after ``timeout`` fails the test
    with its log, which ends with its threads' stacks (faulthandler)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        time.sleep(2)
        kill(process)
        pytest.fail(
            f"the worker did not stop within {timeout:g} s of SIGTERM:\n" + log.read_text()[-6000:]
        )


def holds_a_job(archive: Archive, pid: int) -> bool:
    return any(
        j.status is JobStatus.RUNNING and f":{pid}:" in (j.lease_owner or "")
        for j in archive.jobs.list_jobs()
    )


def test_killed_workers_lose_nothing_and_publish_once(tmp_path: Path, pool: WorkerPool) -> None:
    setup = HubSetup.create(tmp_path / "hub")
    log = tmp_path / "worker.log"
    rng = random.Random(6)
    with setup.open_archive() as archive:
        ingest(setup, archive, pool, simulate_pw(tmp_path / "sim", JOBS))
        published_before_kill = []
        for _ in range(3):
            worker = start_worker(setup, log)
            try:
                wait_for(partial(holds_a_job, archive, worker.pid), 60, "a claimed job")
                time.sleep(rng.uniform(0.2, 1.2))  # mid-run, mid-publish or between jobs
            finally:
                kill(worker)
            published_before_kill.append(sum(feed_kinds(archive).values()))
        last = start_worker(setup, log)
        try:
            wait_for(lambda: archive.jobs.counts()[JobStatus.DONE] == JOBS, 120, "every job done")
        finally:
            assert stop(last, log) == 0, log.read_text()[-3000:]
        assert_all_done_once(archive, JOBS)
        assert sorted(published_before_kill) == published_before_kill
        assert any(j.attempts > 1 for j in archive.jobs.list_jobs()), "no kill hit a job"
        studies = archive.list_studies(Reviewer("r"))
        assert {s.status for s in studies} == {StudyStatus.PROCESSED}
    # The dead workers' private folders (plaintext) were removed by the next worker.
    assert list((setup.state.root / "processing").iterdir()) == []
