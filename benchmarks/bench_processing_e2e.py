"""End to end in one process: from ingest of an instance to its results in the site's feed.

No hub processes: a hub state directory and an :class:`~usreview.store.Archive` (SQLite) in
a temporary folder, the :class:`~usreview.ingest.Ingestor` with its parsing pool, and the
queue worker's path for one job, stage by stage as :class:`~usreview.processing.worker.Worker`
runs it (claim and open the stored envelope, the task, publish, complete), with the task
called in this process instead of a pool process. Per instance kind (a simulated PW Doppler
instance: SR, summary and envelope overlay; a B-mode still: the OBNLM-filtered image), each
instance a copy with new UIDs, sealed by the site beforehand:

- ingest: open the site's envelope, parse it in the pool, store it and its job;
- claim: take the job with a lease, open the stored envelope into the worker's folder;
- pipeline: read the file and run the processors (``run_pipeline``);
- derived: the processors' images as derived DICOM instances;
- SR build: the DICOM SR and the JSON summary;
- seal+publish: seal each output to the site, publish it, complete the job;
- total: from the start of ingest until the site's feed lists every result.

Baseline, measured in the same run on the same files: read + ``run_pipeline`` alone (what
``usreview analyze`` does). The ratio says what the whole hub path costs on top of the
processing itself. Medians over ``COUNT`` instances per kind (after one warm-up instance).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._support import copies, scale, template
from usreview.dicom import read
from usreview.envelope import (
    PrivateKeys,
    generate_keys,
    load_private_keys,
    seal_file,
    write_key_pair,
)
from usreview.hub.api.plaintext import open_stored
from usreview.hub.api.sitekeys import SiteKeyFiles
from usreview.hub.state import HubState, open_state
from usreview.ingest import Ingestor, WorkerPool
from usreview.processing import run_pipeline
from usreview.processing.execution import DEFAULT_TASK, Handle, Outputs, run_task
from usreview.processing.worker import ACTOR, Worker
from usreview.store import Archive, Reviewer

SITE = "bench-site"
COUNT = 10
STAGES = ("ingest", "claim", "pipeline", "derived", "SR build", "seal+publish", "total")
KINDS: dict[str, dict[str, object]] = {"pw": {}, "bmode": {}}


@dataclass
class _Unused:
    """The worker's executor, never used: the task runs in this process."""

    slots: int = 1

    def submit(self, path: Path) -> Handle:
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def _state(root: Path) -> HubState:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    state = open_state(root / "state")
    write_key_pair(generate_keys(SITE), root / "site")
    shutil.copy(root / "site" / f"{SITE}.pub", state.sites / f"{SITE}.pub")
    return state


@dataclass
class _Hub:
    archive: Archive
    ingestor: Ingestor
    worker: Worker
    hub_keys: PrivateKeys
    site_keys: SiteKeyFiles
    scratch: Path


def _one(hub: _Hub, envelope: Path, cursor: int) -> tuple[dict[str, float], int]:
    """Ingest ``envelope`` and run its job; stage seconds and the feed's new cursor."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    hub.ingestor.ingest(SITE, envelope)
    after_ingest = time.perf_counter()
    times["ingest"] = after_ingest - start

    worker, archive = hub.worker, hub.archive
    lease = worker.queue.claim(worker.owner, worker.lease_seconds)
    if lease is None:
        raise SystemExit("no job after ingest")
    plaintext = hub.scratch / f"job-{lease.job.id}.dcm"
    uid = lease.job.sop_instance_uid
    reviewer = Reviewer(ACTOR)
    record = archive.get(reviewer, uid)
    open_stored(
        archive, reviewer, record, plaintext, hub_keys=hub.hub_keys, site_keys=hub.site_keys
    )
    after_claim = time.perf_counter()
    times["claim"] = after_claim - after_ingest

    try:
        outputs: Outputs = run_task(DEFAULT_TASK, str(plaintext))
    finally:
        plaintext.unlink(missing_ok=True)
    after_task = time.perf_counter()
    seconds = dict(outputs.seconds)
    times["pipeline"] = seconds.get("read", 0.0) + seconds.get("pipeline", 0.0)
    times["derived"] = seconds.get("derived", 0.0)
    times["SR build"] = seconds.get("sr", 0.0) + seconds.get("summary", 0.0)

    worker.publish(lease, outputs)
    worker.queue.complete(lease, problem=outputs.problem)
    expected = (outputs.sr is not None) + (outputs.summary is not None) + len(outputs.derived)
    times["seal+publish"] = time.perf_counter() - after_task
    found = archive.results.results_since(SITE, cursor, 1000)
    end = time.perf_counter()
    if len(found) != expected or expected == 0:
        raise SystemExit(f"the feed shows {len(found)} results, expected {expected}")
    times["total"] = end - start
    return times, found[-1].cursor


def _median(rows: list[dict[str, float]], stage: str) -> float:
    return statistics.median(r[stage] for r in rows)


def _baseline(paths: list[Path]) -> float:
    def once(path: Path) -> float:
        start = time.perf_counter()
        run_pipeline(read(path))
        return time.perf_counter() - start

    once(paths[0])  # warm-up
    return statistics.median(once(p) for p in paths)


def main() -> None:
    """Print per-kind stage medians, the total from ingest to feed, and the ratio."""
    count = max(3, round(COUNT * scale()))
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        root = Path(tmp)
        state = _state(root / "hub")
        hub_keys = load_private_keys(state.hub_key)
        site_keys = load_private_keys(root / "hub" / "site" / f"{SITE}.key")
        files: dict[str, list[Path]] = {}
        for kind, params in KINDS.items():
            source = template(kind, root / "data", **params)
            files[kind] = copies(source, count + 1, root / "data" / kind, prefix=kind)
        envelopes: dict[str, list[Path]] = {}
        for kind, paths in files.items():  # the site's work, before the clock starts
            envelopes[kind] = []
            for path in paths:
                sealed = path.with_suffix(".env")
                seal_file(path, sealed, sender=site_keys, recipients=[hub_keys.public])
                envelopes[kind].append(sealed)

        shapes = {kind: read(paths[0]) for kind, paths in files.items()}
        sizes = {k: f"{i.rows}x{i.columns}x{i.number_of_frames}" for k, i in shapes.items()}
        rows: dict[str, list[dict[str, float]]] = {}
        with (
            WorkerPool(1, timeout=60) as pool,
            Archive.open(None, state.root / "archive") as archive,
        ):
            ingestor = Ingestor(
                archive, hub_keys, {SITE: site_keys.public}, None, pool, root / "quarantine"
            )
            worker = Worker(state, archive, _Unused(), lease_seconds=60)
            (root / "plain").mkdir(mode=0o700)
            hub = _Hub(
                archive, ingestor, worker, hub_keys, SiteKeyFiles(state.sites), root / "plain"
            )
            cursor = 0
            try:
                for kind, batch in envelopes.items():
                    _, cursor = _one(hub, batch[0], cursor)  # warm-up
                    rows[kind] = []
                    for envelope in batch[1:]:
                        times, cursor = _one(hub, envelope, cursor)
                        rows[kind].append(times)
            finally:
                worker.close()
        baselines = {kind: _baseline(paths[1:]) for kind, paths in files.items()}

    shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
    print(f"in-process, SQLite archive, median of {count} instances per kind (ms); {shown}")
    header = "".join(f"{s:>13}" for s in STAGES)
    print(f"  {'kind':<6}{header}{'baseline':>11}{'ratio':>8}")
    for kind, found in rows.items():
        cells = "".join(f"{_median(found, s) * 1e3:13.1f}" for s in STAGES)
        base = baselines[kind]
        ratio = _median(found, "total") / base
        print(f"  {kind:<6}{cells}{base * 1e3:11.1f}{ratio:7.2f}x")
    print("  baseline: read + run_pipeline on the same files; ratio: total / baseline")


if __name__ == "__main__":
    main()
