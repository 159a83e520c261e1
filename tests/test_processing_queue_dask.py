"""The Dask path against a real ``dask.distributed`` cluster started by the test.

A :class:`LocalCluster` with two worker processes (one thread each) runs the jobs; while
they run, one Dask worker that is busy with a task is killed with SIGKILL. Its nanny
restarts it and the scheduler runs the lost task again: every job finishes exactly once
and the site's feed holds one SR, one summary and one overlay per job.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processing_queue_support import (
    SLOW_TASK,
    HubSetup,
    assert_all_done_once,
    ingest,
    simulate_pw,
)
from usreview.ingest import WorkerPool
from usreview.processing.execution import DaskExecutor
from usreview.processing.worker import Worker
from usreview.store.jobs import JobStatus

distributed = pytest.importorskip("distributed")

JOBS = 6

# No warning filters: Dask has not warned here (pytest runs with filterwarnings=error);
# if a release starts to, add a targeted ignore with its reason.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(1, timeout=30) as started:
        yield started


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[distributed.LocalCluster]:
    monkeypatch.setenv("USREVIEW_TEST_TASK_SLEEP", "1.5")  # inherited by the Dask workers
    with distributed.LocalCluster(
        processes=True,
        n_workers=2,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=50,
    ) as started:
        yield started


def busy_worker_pid(client: distributed.Client) -> int | None:
    """The pid of a Dask worker that is running one of our tasks now."""
    processing = client.processing()
    pids = client.run(os.getpid)
    for address, keys in processing.items():
        if any(str(k).startswith("usreview-process-") for k in keys):
            return int(pids[address])
    return None


def test_a_dask_worker_lost_mid_job_loses_nothing(
    tmp_path: Path, pool: WorkerPool, cluster: distributed.LocalCluster
) -> None:
    setup = HubSetup.create(tmp_path / "hub")
    with setup.open_archive() as archive:
        ingest(setup, archive, pool, simulate_pw(tmp_path / "sim", JOBS))
        executor = DaskExecutor(cluster.scheduler_address, SLOW_TASK)
        assert executor.slots == 2
        worker = Worker(setup.state, archive, executor, lease_seconds=20, poll_seconds=0.1)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,))
        thread.start()
        with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
            try:
                deadline = time.monotonic() + 60
                while (pid := busy_worker_pid(client)) is None:
                    assert time.monotonic() < deadline, "no Dask worker ever ran a task"
                    time.sleep(0.1)
                time.sleep(0.5)  # well inside the 1.5 s task
                os.kill(pid, signal.SIGKILL)  # a pid the cluster we started reported
                deadline = time.monotonic() + 120
                while archive.jobs.counts()[JobStatus.DONE] < JOBS:
                    assert time.monotonic() < deadline, archive.jobs.list_jobs()
                    assert thread.is_alive()
                    time.sleep(0.1)
            finally:
                stop.set()
                thread.join(30)
                worker.close()
        assert_all_done_once(archive, JOBS)
        # The scheduler re-ran the lost task: no job needed a second attempt of ours.
        assert {j.attempts for j in archive.jobs.list_jobs()} == {1}
