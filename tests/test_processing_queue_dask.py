"""The Dask path against a real ``dask.distributed`` cluster started by the test.

A :class:`LocalCluster` with two worker processes (one thread each) runs the jobs; while
they run, one Dask worker that is busy with a task is killed with SIGKILL. Its nanny
restarts it and the scheduler runs the lost task again: every job finishes exactly once
and the site's feed holds one SR, one summary and one overlay per job. The workers'
temporary folder (``$TMPDIR``) holds no plaintext instance, even of the killed task's
(:func:`~usreview.processing.execution.execute_bytes` keeps it in a memory file).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plaintext_support import PEEKING_TASK, RAISING_TASK, plaintext_left, uid_marker
from tests.processing_queue_support import (
    SLOW_TASK,
    HubSetup,
    assert_all_done_once,
    ingest,
    simulate_pw,
)
from usreview.ingest import WorkerPool
from usreview.processing.execution import DaskExecutor, execute_bytes
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
def worker_tmp(tmp_path: Path) -> Path:
    """The Dask workers' temporary folder (``$TMPDIR``), empty at first."""
    folder = tmp_path / "worker-tmp"
    folder.mkdir()
    return folder


@pytest.fixture
def cluster(
    monkeypatch: pytest.MonkeyPatch, worker_tmp: Path
) -> Iterator[distributed.LocalCluster]:
    monkeypatch.setenv("USREVIEW_TEST_TASK_SLEEP", "1.5")  # inherited by the Dask workers
    monkeypatch.setenv("TMPDIR", str(worker_tmp))  # the spawned workers' gettempdir()
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
    tmp_path: Path, pool: WorkerPool, cluster: distributed.LocalCluster, worker_tmp: Path
) -> None:
    setup = HubSetup.create(tmp_path / "hub")
    with setup.open_archive() as archive:
        sources = simulate_pw(tmp_path / "sim", JOBS)
        ingest(setup, archive, pool, sources)
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
    # The killed worker's instance is not left in its temporary folder.
    assert plaintext_left(worker_tmp, [uid_marker(p) for p in sources]) == []


def test_a_dask_task_keeps_the_plaintext_off_the_workers_temporary_folder(
    tmp_path: Path, cluster: distributed.LocalCluster, worker_tmp: Path
) -> None:
    [source] = simulate_pw(tmp_path / "sim", 1)
    data = source.read_bytes()
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        assert set(client.run(lambda: os.environ["TMPDIR"]).values()) == {str(worker_tmp)}
        # The task fails if it finds the plaintext in the worker's temporary folder.
        outputs = client.submit(execute_bytes, PEEKING_TASK, data, pure=False).result(120)
        assert outputs.sr is not None and outputs.derived
        with pytest.raises(RuntimeError, match="a task that fails"):
            client.submit(execute_bytes, RAISING_TASK, data, pure=False).result(120)
    assert plaintext_left(worker_tmp, [uid_marker(source)]) == []
