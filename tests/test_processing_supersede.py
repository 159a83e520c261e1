"""Superseding: an instance processed again with newer processor versions.

A PW instance is ingested and processed; its job is queued again and a worker runs a task
whose Doppler processor has a newer version. The site's feed then holds the new SR,
summary and overlay, each superseding the older one (marked superseded), the summary
names what it supersedes, the SR's Predecessor Documents Sequence references the older
SR, and reviewers see the newer analysis. Running it again publishes nothing more.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from tests.processing_queue_support import SITE, HubSetup, ingest, open_result, simulate_pw
from usreview.ingest import WorkerPool
from usreview.processing.execution import LocalExecutor, Outputs, execute_file
from usreview.processing.registry import Registry, default_registry
from usreview.processing.supersede import result_key
from usreview.processing.worker import Worker
from usreview.store import Archive, Reviewer, StudyStatus

BUMPED_TASK = "tests.test_processing_supersede:bumped_task"


def bumped_task(path: str) -> Outputs:
    """The pipeline with ``doppler_indices`` at version 1.0-next (a processor that changed)."""
    registry = Registry()
    for proc in default_registry():
        bumped = proc.name == "doppler_indices"
        registry.register(replace(proc, version=f"{proc.version}-next") if bumped else proc)
    return execute_file(path, registry)


def run_worker(setup: HubSetup, archive: Archive, task: str | None = None) -> None:
    executor = LocalExecutor(1, task) if task else LocalExecutor(1)
    worker = Worker(setup.state, archive, executor, lease_seconds=30)
    try:
        worker.run(threading.Event(), until_idle=True)
    finally:
        worker.close()


def test_a_reprocessed_instance_supersedes_its_results(tmp_path: Path) -> None:
    setup = HubSetup.create(tmp_path / "hub")
    [path] = simulate_pw(tmp_path / "sim", 1, first_seed=4)
    truth = json.loads(path.with_name("pw.truth.json").read_text())
    with setup.open_archive() as archive, WorkerPool(1, timeout=30) as pool:
        ingest(setup, archive, pool, [path])
        run_worker(setup, archive)
        first = {r.kind: r for r in archive.results.results_since(SITE)}
        assert sorted(first) == ["derived-image", "sr", "summary"]
        old_analysis = archive.review.analysis(Reviewer("r"), truth["sop_instance_uid"])

        [job] = archive.jobs.list_jobs()
        archive.jobs.reprocess(job.id)
        run_worker(setup, archive, BUMPED_TASK)
        assert archive.study(Reviewer("r"), truth["study_instance_uid"]).status is (
            StudyStatus.PROCESSED
        )

        feed = archive.results.results_since(SITE)
        assert len(feed) == 6
        newer = {r.kind: r for r in feed if r.cursor > max(x.cursor for x in first.values())}
        for kind, old in first.items():
            assert newer[kind].supersedes == old.cursor
            assert archive.results.get_result(SITE, old.cursor).superseded_by == newer[kind].cursor
            assert newer[kind].superseded_by is None
            assert "replaces an earlier version" in (newer[kind].label or "")

        old_summary = json.loads(
            open_result(setup, archive, first["summary"].cursor, tmp_path / "a.json").read_text()
        )
        summary = json.loads(
            open_result(setup, archive, newer["summary"].cursor, tmp_path / "b.json").read_text()
        )
        assert summary["supersedes"] == {
            "sr_result": first["sr"].cursor,
            "result": first["summary"].cursor,
            "sr_sop_instance_uid": old_summary["sr_sop_instance_uid"],
            "signature": old_summary["signature"],
        }
        assert summary["signature"] != old_summary["signature"]
        versions = {p["processor"]: p["version"] for p in summary["processors"]}
        assert versions["doppler_indices"].endswith("-next")

        sr_path = open_result(setup, archive, newer["sr"].cursor, tmp_path / "b.dcm")
        old_sr = pydicom.dcmread(
            open_result(setup, archive, first["sr"].cursor, tmp_path / "a.dcm")
        )
        document = pydicom.dcmread(sr_path)
        assert document.SOPInstanceUID == summary["sr_sop_instance_uid"] != old_sr.SOPInstanceUID
        [item] = document.PredecessorDocumentsSequence
        [series] = item.ReferencedSeriesSequence
        [ref] = series.ReferencedSOPSequence
        assert (item.StudyInstanceUID, series.SeriesInstanceUID) == (
            old_sr.StudyInstanceUID,
            old_sr.SeriesInstanceUID,
        )
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
            old_sr.SOPClassUID,
            old_sr.SOPInstanceUID,
        )
        if shutil.which("dciodvfy"):
            checked = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True)
            assert "Error" not in checked.stderr, checked.stderr

        shown = archive.review.analysis(Reviewer("r"), truth["sop_instance_uid"])
        assert shown.created_at >= old_analysis.created_at
        assert shown.summary["supersedes"]["sr_result"] == first["sr"].cursor
        states = archive.review.instance_states(Reviewer("r"), truth["study_instance_uid"])
        assert states[truth["sop_instance_uid"]].analysis == shown.summary

        archive.jobs.reprocess(job.id)  # the same versions again: nothing new
        run_worker(setup, archive, BUMPED_TASK)
        assert len(archive.results.results_since(SITE)) == 6


@pytest.mark.parametrize("after", [None, 7])
def test_result_keys_stay_within_the_feed_limit(after: int | None) -> None:
    prefix = "auto/" + "1" * 64 + "/derived-image/p/n"
    short = result_key(prefix, "1.0/1.2.3", after)
    assert short == prefix + "/1.0/1.2.3" + ("" if after is None else "/after/7")
    long = result_key(prefix, "1.0/" + "2" * 130, after)
    assert len(long) <= 200 and long.startswith(prefix + "/")
    assert long != result_key(prefix, "1.0/" + "2" * 130, 8)
