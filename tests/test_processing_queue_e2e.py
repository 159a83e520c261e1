"""End to end in one process: ingest a simulated PW instance, the worker runs, the site reads.

No hub: the Ingestor stores the site's envelope (and its job), a :class:`Worker` with a
local process pool runs it, and the site opens the sealed SR, summary and derived image
(the Doppler envelope overlay; for a B-mode still, the filtered image) from its feed with
its key.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.processing_queue_support import (
    PSV_LOINC,
    SITE,
    HubSetup,
    ingest,
    open_result,
    simulate_pw,
    sr_measurements,
)
from tests.site_helpers import children, command_line, wait_until
from usreview.ingest import WorkerPool
from usreview.processing import default_registry, plausible, similarity
from usreview.processing.execution import LocalExecutor
from usreview.processing.worker import Worker
from usreview.simulate import simulate
from usreview.site.deliver import is_dicom
from usreview.store import Reviewer, StudyStatus
from usreview.store.jobs import JobRecord, JobStatus, RetryPolicy


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(1, timeout=30) as started:
        yield started


def test_ingest_to_sealed_sr_in_the_sites_feed(tmp_path: Path, pool: WorkerPool) -> None:
    setup = HubSetup.create(tmp_path / "hub")
    [path] = simulate_pw(tmp_path / "sim", 1, first_seed=3)
    truth = json.loads(path.with_name("pw.truth.json").read_text())
    with setup.open_archive() as archive:
        ingest(setup, archive, pool, [path])
        [job] = archive.jobs.list_jobs()
        assert job.status is JobStatus.PENDING and job.site == SITE
        assert job.sop_instance_uid == truth["sop_instance_uid"]

        worker = Worker(setup.state, archive, LocalExecutor(1), lease_seconds=30)
        try:
            worker.run(threading.Event(), until_idle=True)
        finally:
            worker.close()

        assert archive.jobs.get(job.id).status is JobStatus.DONE
        study = archive.study(Reviewer("r"), truth["study_instance_uid"])
        assert study.status is StudyStatus.PROCESSED
        feed = archive.results.results_since(SITE)
        assert sorted(r.kind for r in feed) == ["derived-image", "sr", "summary"]
        by_kind = {r.kind: r for r in feed}

        sr = open_result(setup, archive, by_kind["sr"].cursor, tmp_path / "sr.dcm")
        psv = sr_measurements(sr)[PSV_LOINC]
        assert psv == pytest.approx(truth["psv_cm_s"], rel=0.05)
        document = pydicom.dcmread(sr)
        [evidence] = document.CurrentRequestedProcedureEvidenceSequence
        refs = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert [r.ReferencedSOPInstanceUID for r in refs] == [truth["sop_instance_uid"]]
        assert document.PreliminaryFlag == "PRELIMINARY"

        summary = json.loads(
            open_result(setup, archive, by_kind["summary"].cursor, tmp_path / "s.json").read_text()
        )
        names = {q["name"]: q for q in summary["quantities"]}
        assert names["peak_systolic_velocity"]["code"] == PSV_LOINC
        assert summary["sr_sop_instance_uid"] == document.SOPInstanceUID
        overlay_path = open_result(
            setup, archive, by_kind["derived-image"].cursor, tmp_path / "overlay.dcm"
        )
        assert is_dicom(overlay_path)  # what makes the site's gateway C-STORE it to its PACS
        overlay = pydicom.dcmread(overlay_path)
        assert_derived_from(overlay, path, "113076")
        [listed] = summary["derived_images"]
        assert (listed["processor"], listed["sop_instance_uid"]) == (
            "doppler_indices",
            overlay.SOPInstanceUID,
        )
        assert "decision support" in summary["notice"]
        # The worker's private folder is gone, and nothing was left in plaintext.
        assert not any((setup.state.root / "processing").iterdir())


def assert_derived_from(ds: Dataset, source_path: Path, derivation: str) -> None:
    """``ds`` is a derived US image of the file ``source_path`` (regions, reference, code)."""
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image, not SC
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SequenceOfUltrasoundRegions == source.SequenceOfUltrasoundRegions
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ds.DerivationCodeSequence[0].CodeValue == derivation


def test_a_bmode_still_comes_back_filtered(tmp_path: Path, pool: WorkerPool) -> None:
    setup = HubSetup.create(tmp_path / "hub")
    path = simulate("bmode", tmp_path / "sim", seed=2, rows=300, columns=400)[0]
    with setup.open_archive() as archive:
        ingest(setup, archive, pool, [path])
        worker = Worker(setup.state, archive, LocalExecutor(1), lease_seconds=30)
        try:
            worker.run(threading.Event(), until_idle=True)
        finally:
            worker.close()
        [job] = archive.jobs.list_jobs()
        assert job.status is JobStatus.DONE and job.note is None
        # The job keeps the processors that ran (``hub jobs --outdated`` compares them).
        obnlm = default_registry().get("speckle_obnlm").version
        assert job.processors is not None and f"speckle_obnlm={obnlm}" in job.processors
        assert f"value_ranges={plausible.VERSION}" in job.processors  # the value check, as one
        # and the descriptor its similar cases are chosen by; a still triggers no study rule
        assert f"similarity={similarity.VERSION}" in job.processors
        assert not any(p.startswith("study_evaluation=") for p in job.processors)
        [result] = archive.results.results_since(SITE)  # nothing measured: the image only
        assert result.kind == "derived-image"
        filtered = pydicom.dcmread(open_result(setup, archive, result.cursor, tmp_path / "f.dcm"))
        assert_derived_from(filtered, path, "113087")
        assert f"speckle_obnlm {obnlm}" in filtered.DerivationDescription


def test_a_filtered_image_forwarded_back_is_not_processed_again(
    tmp_path: Path, pool: WorkerPool
) -> None:
    setup = HubSetup.create(tmp_path / "hub")
    path = simulate("bmode", tmp_path / "sim", seed=4, rows=300, columns=400)[0]
    with setup.open_archive() as archive:

        def run_worker() -> None:
            worker = Worker(setup.state, archive, LocalExecutor(1), lease_seconds=30)
            try:
                worker.run(threading.Event(), until_idle=True)
            finally:
                worker.close()

        ingest(setup, archive, pool, [path])
        run_worker()
        [result] = archive.results.results_since(SITE)
        forwarded = open_result(setup, archive, result.cursor, tmp_path / "forwarded.dcm")
        ingest(setup, archive, pool, [forwarded])  # the site's PACS sends it back to the hub
        run_worker()
        jobs = archive.jobs.list_jobs()
        assert [(j.status, j.note) for j in jobs] == [(JobStatus.DONE, None)] * 2
        assert archive.results.results_since(SITE, result.cursor) == []  # nothing new
        study = archive.study(Reviewer("r"), pydicom.dcmread(path).StudyInstanceUID)
        assert study.status is StudyStatus.PROCESSED


def _processed(
    setup: HubSetup,
    pool: WorkerPool,
    paths: list[Path],
    executor: LocalExecutor,
    **options: float,
) -> dict[str, JobRecord]:
    """Ingest ``paths``, work on them with ``executor`` until idle; the jobs by UID."""
    with setup.open_archive() as archive:
        ingest(setup, archive, pool, paths)
        worker = Worker(setup.state, archive, executor, lease_seconds=30, **options)
        try:
            worker.run(threading.Event(), until_idle=True)
        finally:
            worker.close()
        return {j.sop_instance_uid: j for j in archive.jobs.list_jobs()}


def test_an_instance_that_never_finishes_fails_alone_at_the_deadline(
    tmp_path: Path, pool: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.processing_queue_support import HANGING_TASK

    setup = HubSetup.create(tmp_path / "hub")
    paths = simulate_pw(tmp_path / "sim", 3)
    hanging = str(pydicom.dcmread(paths[0]).SOPInstanceUID)
    monkeypatch.setenv("USREVIEW_TEST_HANG_UID", hanging)  # the pool's processes inherit it
    before = _spawned_children()
    jobs = _processed(setup, pool, paths, LocalExecutor(2, HANGING_TASK), task_seconds=15)
    failed = jobs.pop(hanging)
    assert failed.status is JobStatus.FAILED and failed.attempts == 1
    assert "took more than 15 s; not tried again" in (failed.last_error or "")
    assert [j.status for j in jobs.values()] == [JobStatus.DONE] * 2  # the others: done
    # The hanging process was stopped (the pool's processes end with the worker).
    wait_until(lambda: not _spawned_children() - before, timeout=30, step=0.2)


def test_an_instance_that_needs_too_much_memory_fails_alone(
    tmp_path: Path, pool: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.processing_queue_support import HANGING_TASK

    setup = HubSetup.create(tmp_path / "hub")
    paths = simulate_pw(tmp_path / "sim", 2)
    greedy = str(pydicom.dcmread(paths[0]).SOPInstanceUID)
    monkeypatch.setenv("USREVIEW_TEST_GREEDY_UID", greedy)
    jobs = _processed(setup, pool, paths, LocalExecutor(1, HANGING_TASK, memory=2 * 1024**3))
    failed = jobs.pop(greedy)  # tried again later, as a job that failed for want of memory
    assert failed.status is JobStatus.PENDING and "MemoryError" in (failed.last_error or "")
    assert [j.status for j in jobs.values()] == [JobStatus.DONE]  # the same process went on


def _spawned_children() -> set[int]:
    """This process's live children started by multiprocessing's spawn method."""
    return {pid for pid in children(os.getpid()) if b"multiprocessing.spawn" in command_line(pid)}


def test_the_local_pool_starts_its_processes_before_the_first_job() -> None:
    before = _spawned_children()
    executor = LocalExecutor(2)
    try:
        # Both import the processors now, not when the first instance arrives.
        wait_until(lambda: len(_spawned_children() - before) == 2, timeout=60, step=0.1)
    finally:
        executor.close()


def test_closing_the_local_pool_stops_a_task_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that stops (the hub stopping) does not wait for a filter in flight: its
    job was released for another worker, and its process ends with the pool."""
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.processing_queue_support import HANGING_TASK

    [path] = simulate_pw(tmp_path / "sim", 1)
    monkeypatch.setenv("USREVIEW_TEST_HANG_UID", str(pydicom.dcmread(path).SOPInstanceUID))
    script = (
        "import sys, time\n"
        "from usreview.processing.execution import LocalExecutor\n"
        f"pool = LocalExecutor(1, {HANGING_TASK!r})\n"
        f"future = pool.submit(__import__('pathlib').Path({str(path)!r}))\n"
        "while not future.running(): time.sleep(0.05)\n"
        "time.sleep(1)\n"
        "print('running', flush=True)\n"
        "pool.close()\n"
    )
    run = subprocess.run(  # with the old close(), the exit waited for the task: for ever
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout == "running\n", run.stderr


def test_summaries_name_the_most_similar_cases_of_the_library(
    tmp_path: Path, pool: WorkerPool
) -> None:
    from tests.teaching_support import teaching_case
    from usreview.hub.api.teaching_cases import open_teaching_store
    from usreview.processing.similarity import VERSION

    setup = HubSetup.create(tmp_path / "hub")
    sim = tmp_path / "sim"
    priors = {  # studies an expert reported on, made teaching cases
        "Normal carotid spectrum.": simulate("pw", sim / "normal", seed=1)[0],
        "ICA stenosis.": simulate("pw", sim / "stenosis", seed=2, psv_cm_s=260, edv_cm_s=110)[0],
        "Large cysts.": simulate("bmode", sim / "cysts", seed=3, inclusions=6, min_radius_mm=8)[0],
    }
    stenotic = simulate("pw", sim / "query-pw", seed=9, psv_cm_s=250, edv_cm_s=100)[0]
    cysts = simulate("bmode", sim / "query-b", seed=8, inclusions=5, min_radius_mm=8)[0]
    study = {
        p: pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in sim.rglob("*.dcm")
    }
    with setup.open_archive() as archive:
        ingest(setup, archive, pool, [*priors.values(), stenotic, cysts])
        store = open_teaching_store(archive, setup.state.at_rest_key)
        cases = {}
        for n, (impression, path) in enumerate(priors.items()):
            case = teaching_case(tmp_path / f"case{n}", path, study[path], impression=impression)
            cases[impression] = store.add(
                Reviewer("dr"), study[path], tmp_path / f"case{n}", case
            ).case_uid
        worker = Worker(setup.state, archive, LocalExecutor(1), lease_seconds=30)
        try:
            worker.run(threading.Event(), until_idle=True)
        finally:
            worker.close()

        summaries = {}
        for result in archive.results.results_since(SITE):
            if result.kind == "summary":
                opened = open_result(
                    setup, archive, result.cursor, tmp_path / f"{result.cursor}.json"
                )
                summaries[result.study_instance_uid] = json.loads(opened.read_text())

        def similar(path: Path) -> list[dict[str, Any]]:
            findings = summaries[study[path]]["findings"] if study[path] in summaries else []
            found = [f for f in findings if f["code"] == "similar_cases"]
            return found[0]["evidence"]["matches"] if found else []

        def compared(path: Path) -> int:
            [found] = [
                f for f in summaries[study[path]]["findings"] if f["code"] == "similar_cases"
            ]
            return int(found["evidence"]["compared"])

        # The stenotic spectrum is most like the stenosis case, then the normal one; never
        # like a B-mode case.
        matches = similar(stenotic)
        assert [m["case_uid"] for m in matches] == [
            cases["ICA stenosis."],
            cases["Normal carotid spectrum."],
        ]
        assert set(matches[0]) == {"case_uid", "sop_instance_uid", "similarity", "rank"}
        assert matches[0]["similarity"] > matches[1]["similarity"]
        # Ranked among the spectra compared (the B-mode case is another kind).
        assert [m["rank"] for m in matches] == [1, 2] and compared(stenotic) == 2
        # A B-mode still (filtered images only) gets a summary for its similar case, no SR.
        [match] = similar(cysts)
        assert match["case_uid"] == cases["Large cysts."] and match["similarity"] > 0.9
        assert summaries[study[cysts]]["sr_sop_instance_uid"] is None
        # A case is never offered for its own study.
        assert [m["case_uid"] for m in similar(priors["ICA stenosis."])] == [
            cases["Normal carotid spectrum."]
        ]
        assert study[priors["Large cysts."]] not in summaries  # nothing to say of it
        # Each library instance was described once, and its descriptor kept.
        kept = store.descriptors([i.sop_instance_uid for i in store.library()])
        assert len(kept) == 3 and {d["version"] for d in kept.values()} == {VERSION}
        # Each read of a copy is audited.
        audit = [json.loads(line) for line in setup.state.audit_log.read_text().splitlines()]
        assert sorted(e["resource"] for e in audit if e["outcome"] == "described") == sorted(
            f"teaching/{i.case_uid}/instances/{i.sop_instance_uid}" for i in store.library()
        )


def test_every_instance_the_worker_opens_is_audited_first(
    tmp_path: Path, pool: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``read`` line per instance opened, with the job, before its plaintext exists;
    an audit log that cannot be written fails the attempt, and nothing is opened."""
    from usreview.hub.audit import AuditLog, verify
    from usreview.processing import worker as worker_module

    setup = HubSetup.create(tmp_path / "hub")
    [path] = simulate_pw(tmp_path / "sim", 1, first_seed=3)
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    log = setup.state.audit_log
    opened: list[tuple[str, int]] = []  # (what was opened, audit lines written by then)
    real_open = worker_module.open_stored

    def open_stored(*args: Any, **kwargs: Any) -> None:
        lines = len(log.read_text().splitlines()) if log.exists() else 0
        opened.append((args[2].sop_instance_uid, lines))
        real_open(*args, **kwargs)

    monkeypatch.setattr(worker_module, "open_stored", open_stored)
    with setup.open_archive() as archive:
        ingest(setup, archive, pool, [path])
        [job] = archive.jobs.list_jobs()
        again = RetryPolicy(max_attempts=2, initial=0.0)  # both attempts in one step
        worker = Worker(setup.state, archive, LocalExecutor(1), lease_seconds=30, policy=again)
        try:
            key = setup.state.audit_key.read_bytes()
            (tmp_path / "not-a-file").mkdir()
            worker._audit = AuditLog(tmp_path / "not-a-file", key)  # cannot be written
            worker.step()
            failed = archive.jobs.get(job.id)  # as when a published line cannot be written
            assert failed.status is JobStatus.FAILED and failed.attempts == 2
            assert "opening the stored instance: AuditError: cannot open the audit log" in (
                failed.last_error or ""
            )
            assert opened == [] and not list(worker._scratch.folder.glob("job-*"))
            worker._audit = AuditLog(log, key)
            archive.jobs.retry(job.id, actor="test")
            worker.run(threading.Event(), until_idle=True)
        finally:
            worker.close()
        assert archive.jobs.get(job.id).status is JobStatus.DONE
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    reads = [(n, x) for n, x in enumerate(lines) if x["action"] == "read"]
    assert len(reads) == len(opened) >= 1  # one line per instance opened
    for (number, line), (what, written) in zip(reads, opened, strict=True):
        assert (line["actor"], line["resource"], line["outcome"]) == (
            "processing", f"instances/{what}", "allowed"
        )  # fmt: skip
        assert line["detail"]["job"] == job.id and line["detail"]["site"] == SITE
        assert number < written  # on disk before the envelope was opened
    assert reads[0][1]["resource"] == f"instances/{uid}"
    published = [n for n, x in enumerate(lines) if x["outcome"] == "published"]
    assert published and reads[0][0] < published[0]
    assert {x["actor"] for x in lines if x["outcome"] == "published"} == {"processing"}
    assert verify(log, setup.state.audit_key.read_bytes()).ok


def test_a_processor_deployed_while_the_pool_runs_runs_from_the_next_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's processes live as long as the worker: a package installed meanwhile
    (the research notebook's "Deploying it") runs on the next instance, same processes."""
    from tests.processing_support import HOTPLUG, install_fake_package

    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # the pool's processes start with it
    [path] = simulate_pw(tmp_path / "sim", 1, first_seed=3)
    executor = LocalExecutor(1)
    try:
        before = executor.submit(path).result(timeout=120)
        processes = set(executor._pool._processes)
        assert before.processors and not any(p.startswith("hotplug") for p in before.processors)
        install_fake_package(
            site, "usreview_hotplug", HOTPLUG, "hotplug = usreview_hotplug:hotplug_kinds"
        )
        after = executor.submit(path).result(timeout=120)
        assert after.processors and "hotplug_kinds=0.1" in after.processors
        assert set(executor._pool._processes) == processes  # not restarted
    finally:
        executor.close()
