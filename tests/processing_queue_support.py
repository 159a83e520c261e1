"""Helpers of the processing-queue tests: a hub state with one site, ingest, the site's view.

``slow_task`` is a task for the executors (imported by name in spawned processes and Dask
workers): it sleeps ``$USREVIEW_TEST_TASK_SLEEP`` seconds (default 1), then runs the
pipeline, so that a test can kill whatever runs it mid-job.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd

from usreview.envelope import KeyRing, PrivateKeys, generate_keys, seal_file, unseal, write_key_pair
from usreview.hub.state import HubState, open_state
from usreview.ingest import Ingestor, WorkerPool
from usreview.processing.execution import Outputs, execute_file
from usreview.simulate import simulate
from usreview.store import Archive
from usreview.store.jobs import JobStatus

SITE = "site-a"
SLOW_TASK = "tests.processing_queue_support:slow_task"
PSV_LOINC = "11726-7"


def slow_task(path: str) -> Outputs:
    """Sleep, then run the pipeline (see the module docstring)."""
    time.sleep(float(os.environ.get("USREVIEW_TEST_TASK_SLEEP", "1")))
    return execute_file(path)


HANGING_TASK = "tests.processing_queue_support:hanging_task"


def hanging_task(path: str) -> Outputs:
    """Run the pipeline, except on the instance ``$USREVIEW_TEST_HANG_UID``: never return;
    and on ``$USREVIEW_TEST_GREEDY_UID``: first take 3 GiB of memory."""
    import pydicom

    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    if uid == os.environ.get("USREVIEW_TEST_HANG_UID"):
        while True:
            time.sleep(1)
    if uid == os.environ.get("USREVIEW_TEST_GREEDY_UID"):
        hoard = bytearray(3 * 1024**3)
        del hoard
    return execute_file(path)


@dataclass
class HubSetup:
    """A hub state directory with site ``SITE`` registered, and the site's keys."""

    state: HubState
    site_keys: PrivateKeys
    hub_keys: PrivateKeys

    @classmethod
    def create(cls, root: Path) -> HubSetup:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        state = open_state(root / "state")
        site = generate_keys(SITE)
        write_key_pair(site, root / "site")
        shutil.copy(root / "site" / f"{SITE}.pub", state.sites / f"{SITE}.pub")
        from usreview.envelope import load_private_keys

        return cls(state, site, load_private_keys(state.hub_key))

    def open_archive(self, url: str | None = None) -> Archive:
        return Archive.open(url, self.state.root / "archive")


def simulate_pw(folder: Path, count: int, *, first_seed: int = 1) -> list[Path]:
    """``count`` simulated PW instances (one study each)."""
    return [
        simulate("pw", folder / f"pw{seed}", seed=seed)[0]
        for seed in range(first_seed, first_seed + count)
    ]


def ingest(setup: HubSetup, archive: Archive, pool: WorkerPool, paths: list[Path]) -> None:
    """Seal each file from the site to the hub and ingest it."""
    ingestor = Ingestor(
        archive,
        setup.hub_keys,
        {SITE: setup.site_keys.public},
        None,
        pool,
        setup.state.root / "quarantine",
    )
    for path in paths:
        envelope = path.with_suffix(".env")
        seal_file(path, envelope, sender=setup.site_keys, recipients=[setup.hub_keys.public])
        ingestor.ingest(SITE, envelope)
        envelope.unlink()


def feed_kinds(archive: Archive) -> Counter[tuple[str, str]]:
    """``(study UID, kind)`` of every result in the site's feed, counted."""
    found: Counter[tuple[str, str]] = Counter()
    cursor = 0
    while batch := archive.results.results_since(SITE, cursor, 1000):
        found.update((r.study_instance_uid, r.kind) for r in batch)
        cursor = batch[-1].cursor
    return found


def open_result(setup: HubSetup, archive: Archive, cursor: int, out: Path) -> Path:
    """Open result ``cursor`` as the site does (its key, the hub as the only sender)."""
    data = archive.results.read_result(SITE, cursor)
    unseal(
        io.BytesIO(data),
        out,
        recipient=setup.site_keys,
        keyring=KeyRing([setup.hub_keys.public]),
    )
    return out


def sr_measurements(path: Path) -> dict[str, float]:
    """``{LOINC or other code value: value}`` of the measurements in an SR file."""
    document = hd.sr.srread(path)
    values: dict[str, float] = {}
    for group in document.content.get_image_measurement_groups():
        for item in group.get_measurements():
            values[item.name.value] = float(item.value)
    return values


def assert_all_done_once(archive: Archive, count: int) -> None:
    """Every job is done, and the feed has one SR, one summary and one overlay for each."""
    jobs = archive.jobs.list_jobs()
    assert len(jobs) == count
    assert {j.status for j in jobs} == {JobStatus.DONE}, [
        (j.id, j.status, j.last_error) for j in jobs
    ]
    kinds = feed_kinds(archive)
    studies = {j.study_instance_uid for j in jobs}
    assert set(kinds) == {(s, k) for s in studies for k in ("sr", "summary", "derived-image")}
    assert set(kinds.values()) == {1}, kinds
