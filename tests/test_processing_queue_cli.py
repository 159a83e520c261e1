"""``usreview hub jobs``, ``python -m usreview.processing.worker`` and the hub's worker service."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from traitlets.config import Config

from tests.hub_api_support import admin_audit
from tests.processing_queue_support import SITE, HubSetup
from tests.store_support import meta
from usreview.cli import main
from usreview.hub.config import WORKER_SERVICE
from usreview.processing import default_registry, plausible, similarity
from usreview.processing.recommendations import study as study_rule
from usreview.store import Reviewer, StudyStatus
from usreview.store.jobs import JobQueue, JobRecord, RetryPolicy, outdated_processors

REPO = Path(__file__).resolve().parents[1]


STUDY = "1.2.826.0.2.1"  # the study of ``meta(1, study=1)``


def _stored(tmp_path: Path, count: int) -> HubSetup:
    """A hub state holding ``count`` instances, one study each, with their jobs pending."""
    setup = HubSetup.create(tmp_path / "hub")
    with setup.open_archive() as archive:
        for n in range(1, count + 1):
            archive.put(SITE, f"envelope {n}".encode(), meta(n, study=n))
    return setup


def _fail_first(setup: HubSetup, reason: str) -> None:
    """Claim the first pending job and fail it for good (one attempt allowed)."""
    with setup.open_archive() as archive:
        queue = JobQueue(archive, RetryPolicy(max_attempts=1))
        lease = queue.claim("w", 30)
        assert lease is not None
        queue.fail(lease, reason)


def _jobs(setup: HubSetup, *args: str) -> int:
    """``usreview hub jobs --state STATE ARGS``."""
    return main(["hub", "jobs", "--state", str(setup.state.root), *args])


def _requeued(
    setup: HubSetup, flag: str, capsys: pytest.CaptureFixture[str]
) -> tuple[str, JobRecord, StudyStatus]:
    """``hub jobs FLAG 1``: what it printed, then job 1 and its study's status.

    The study's history names the command, so does the audit log's one ``admin`` line,
    and ``FLAG 7`` (no such job) is refused.
    """
    assert _jobs(setup, flag, "1") == 0
    out = capsys.readouterr().out
    outcome = {"--retry": "retried", "--reprocess": "reprocessed"}[flag]
    assert admin_audit(setup.state.root) == [
        (f"usreview hub jobs {flag}", "jobs/1", outcome,
         {"site": SITE, "sop_instance_uid": "1.2.826.0.1.1"}),
    ]  # fmt: skip
    with setup.open_archive() as archive:
        [job] = archive.jobs.list_jobs()
        status = archive.study(Reviewer("r"), STUDY).status
        assert archive.history(Reviewer("r"), STUDY)[-1].actor == f"usreview hub jobs {flag}"
    assert _jobs(setup, flag, "7") == 1
    assert "no job 7" in capsys.readouterr().err
    return out, job, status


def test_hub_jobs_lists_jobs_and_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = _stored(tmp_path, 2)
    _fail_first(setup, "opening the stored instance: CorruptObjectError: it does not open")
    with setup.open_archive() as archive:
        study = archive.study(Reviewer("r"), STUDY)
    assert study.status is StudyStatus.FAILED and "does not open" in (study.reason or "")
    assert _jobs(setup) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:5] for line in lines] == [
        ["1", "failed", "1", SITE, "1.2.826.0.1.1"],
        ["2", "pending", "0", SITE, "1.2.826.0.1.2"],
    ]
    assert main(["hub", "--state", str(setup.state.root), "jobs", "--failed"]) == 0
    [failed] = capsys.readouterr().out.splitlines()
    assert failed.startswith("1\tfailed") and "failed 1 times, last: opening" in failed


def test_hub_jobs_retry_requeues_a_failed_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = _stored(tmp_path, 1)
    _fail_first(setup, "running the pipeline: MemoryError")
    out, job, status = _requeued(setup, "--retry", capsys)
    assert out == "job 1 (1.2.826.0.1.1) is pending again\n"
    assert (job.status.value, job.attempts) == ("pending", 0)
    assert status is StudyStatus.RECEIVED
    assert _jobs(setup, "--retry", "1") == 1  # pending: refused
    assert "only a failed job can be retried" in capsys.readouterr().err


def test_hub_jobs_reprocess_queues_a_finished_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = _stored(tmp_path, 1)
    with setup.open_archive() as archive:
        lease = archive.jobs.claim("w", 30)
        assert lease is not None
        assert _jobs(setup, "--reprocess", "1") == 1  # running
        assert "only a done or failed job can be queued again" in capsys.readouterr().err
        archive.jobs.complete(lease)
    out, job, _ = _requeued(setup, "--reprocess", capsys)
    assert out == "job 1 (1.2.826.0.1.1) is queued again\n"
    assert job.status.value == "pending"


def test_hub_jobs_outdated_finds_and_requeues_jobs_of_older_processor_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = {p.name: p.version for p in default_registry()}
    checked = f"{plausible.NAME}={plausible.VERSION}"
    compared = f"{similarity.NAME}={similarity.VERSION}"
    evaluated = f"{study_rule.NAME}={study_rule.VERSION}"
    now = [f"{name}={version}" for name, version in current.items()] + [compared, checked]
    obnlm = f"speckle_obnlm={current['speckle_obnlm']}"
    setup = _stored(tmp_path, 10)  # B-mode (and color flow) instances
    with setup.open_archive() as archive:  # and two PW spectra
        for n in (11, 12):
            spectrum = replace(meta(n, study=n), kinds=["pw_doppler"])
            archive.put(SITE, f"envelope {n}".encode(), spectrum)
        ran = [
            [*(p for p in now if p != obnlm), "speckle_obnlm=0.9"],  # an older OBNLM
            now,  # up to date
            None,  # done before jobs recorded their processors
            [*now, "retired_processor=0.1"],  # no longer registered: nothing replaces it
            [p for p in now if p != checked],  # done before the value check
            [],  # an image usreview derived: never processed
            [p for p in now if not p.startswith("doppler_indices=")],  # not for B-mode
            [p for p in now if p != obnlm],  # a B-mode processor added since
            [*(p for p in now if p != compared), "similarity=1.0"],  # the old descriptor
            [p for p in now if p != compared],  # done before jobs recorded the descriptor
            [*now, "study_evaluation=1.2"],  # a spectrum whose study the old rule evaluated
            [*now, evaluated],  # a spectrum up to date
        ]
        for processors in ran:
            lease = archive.jobs.claim("w", 30)
            assert lease is not None
            archive.jobs.complete(lease, processors=processors)
        [first, *_, last] = archive.jobs.list_jobs()
        assert first.processors == tuple(sorted(ran[0] or ()))
        assert first.kinds == ("bmode", "color_flow") and last.kinds == ("pw_doppler",)
    assert _jobs(setup, "--outdated") == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    why = {
        1: f"speckle_obnlm 0.9 -> {current['speckle_obnlm']}",
        3: "processors not recorded",
        5: f"value_ranges none -> {plausible.VERSION}",
        8: f"speckle_obnlm none -> {current['speckle_obnlm']}",
        9: f"similarity 1.0 -> {similarity.VERSION}",
        10: f"similarity none -> {similarity.VERSION}",
        11: f"study_evaluation 1.2 -> {study_rule.VERSION}",
    }
    assert lines == [[str(n), SITE, f"1.2.826.0.1.{n}", text] for n, text in why.items()]
    assert _jobs(setup, "--reprocess-outdated") == 0
    assert capsys.readouterr().out.startswith("7 job(s) queued again (1 of them without")
    with setup.open_archive() as archive:
        status = {job.id: job.status.value for job in archive.jobs.list_jobs()}
        history = archive.history(Reviewer("r"), "1.2.826.0.2.1")
    assert status == {n: "pending" if n in why else "done" for n in range(1, 13)}
    assert history[-1].actor == "usreview hub jobs --reprocess-outdated"
    assert [
        (resource, detail["outdated"]) for _, resource, _, detail in admin_audit(setup.state.root)
    ] == [(f"jobs/{n}", text) for n, text in why.items()]
    assert _jobs(setup, "--outdated") == 0 and capsys.readouterr().out == ""  # none done now


def test_outdated_processors_names_what_changed() -> None:
    current = {"speckle_obnlm": "1.1", "speckle_fast": "1.0"}
    assert outdated_processors(["speckle_obnlm=1.0", "speckle_fast=1.0"], current) == [
        "speckle_obnlm 1.0 -> 1.1"
    ]
    assert outdated_processors(["speckle_obnlm=1.1", "gone=2.0"], current) == []
    assert outdated_processors([], current) == []
    expected = ["speckle_fast", "speckle_obnlm"]
    assert outdated_processors(["speckle_obnlm=1.0"], current, expected) == [
        "speckle_obnlm 1.0 -> 1.1",
        "speckle_fast none -> 1.0",
    ]


def test_the_worker_refuses_to_start_with_a_sentence(tmp_path: Path) -> None:
    setup = HubSetup.create(tmp_path / "hub")
    setup.state.root.chmod(0o755)  # readable by others: the state is refused
    done = subprocess.run(
        [sys.executable, "-m", "usreview.processing.worker", "--state", str(setup.state.root)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "accessible to others" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_stops_the_worker_and_its_processes_without_a_traceback(tmp_path: Path) -> None:
    import os
    import signal

    setup = HubSetup.create(tmp_path / "hub")
    worker = subprocess.Popen(
        [sys.executable, "-m", "usreview.processing.worker", "--state", str(setup.state.root)],
        cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert worker.stderr is not None
        assert "running jobs on 2 local process(es)" in worker.stderr.readline()
        # At once, while the pool's processes import the processors (a second or two):
        # they must not die with a traceback either.
        os.killpg(worker.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
        _, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert worker.returncode == 0 and "Traceback" not in err, err


def test_the_hub_manages_one_worker(configured: tuple[Config, Path]) -> None:
    c, state = configured
    services = {s["name"]: s for s in c.JupyterHub.services}
    worker = services[WORKER_SERVICE]
    assert worker["command"][1:] == ["-m", "usreview.processing.worker"]
    assert worker["environment"]["USREVIEW_STATE"] == str(state.absolute())
    assert "url" not in worker  # a process, not a web service: no route, no scopes


def test_hub_jobs_backfill_queues_instances_stored_before_the_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy import delete
    from sqlalchemy.orm import Session

    from usreview.store.database import writer
    from usreview.store.jobs_schema import JobRow

    setup = _stored(tmp_path, 3)
    with (
        setup.open_archive() as archive,
        Session(writer(archive._engine)) as session,
        session.begin(),
    ):
        session.execute(delete(JobRow).where(JobRow.id != 2))  # as if stored before
    assert _jobs(setup, "--backfill") == 0
    assert "2 instance(s) without a processing job queued" in capsys.readouterr().out
    assert _jobs(setup, "--backfill") == 0
    assert "0 instance(s)" in capsys.readouterr().out
    assert admin_audit(setup.state.root) == [
        ("usreview hub jobs --backfill", "jobs", "backfilled", {"queued": 2}),
        ("usreview hub jobs --backfill", "jobs", "backfilled", {"queued": 0}),
    ]
    with setup.open_archive() as archive:
        jobs = archive.jobs.list_jobs()
    assert sorted(j.sop_instance_uid for j in jobs) == [f"1.2.826.0.1.{n}" for n in (1, 2, 3)]
    assert all(j.status.value == "pending" for j in jobs)


@pytest.mark.parametrize(
    ("option", "value", "refusal"),
    [
        ("--task", "bogus", "--task 'bogus': give MODULE:FUNCTION (default usreview.proc"),
        ("--task", "nosuchmod:func", "--task 'nosuchmod:func': nosuchmod does not import"),
        ("--task", "usreview.processing.execution:nope", "--task 'usreview.processing.ex"),
        ("--scheduler", "garbage", "--scheduler 'garbage': missing port number in address"),
        ("--scheduler", "tcp://127.0.0.1:99999", "--scheduler 'tcp://127.0.0.1:99999': inv"),
        ("--scheduler", "nosuch://h:1", "--scheduler 'nosuch://h:1': unknown address scheme"),
    ],
)
def test_the_worker_checks_its_task_and_scheduler_before_it_starts(
    option: str,
    value: str,
    refusal: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mistyped task would fail every job and its study; a bad address hangs a minute."""
    from usreview.hub.state import open_state
    from usreview.processing import worker

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the worker started")

    for executor in ("LocalExecutor", "DaskExecutor"):
        monkeypatch.setattr(worker, executor, started)
    state = open_state(tmp_path / "state")
    assert main(["hub", "worker", "--state", str(state.root), option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usreview: error: {refusal}") and err.count("\n") == 1, err


def test_the_worker_process_refuses_a_bad_scheduler_at_once(tmp_path: Path) -> None:
    setup = HubSetup.create(tmp_path / "hub")
    args = ["--state", str(setup.state.root), "--scheduler", "garbage"]
    done = subprocess.run(
        [sys.executable, "-m", "usreview.processing.worker", *args],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("usreview: error: --scheduler 'garbage': missing port number")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
