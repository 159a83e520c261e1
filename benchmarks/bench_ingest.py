"""Ingest: open + parse + store of small sealed instances, against storing alone.

N simulated B-mode instances (480x640, about 308 KB, the BASELINES "small set") are
sealed at the "site" to the hub; the hub ingests them through :class:`Ingestor` (open
the envelope into quarantine, parse in the worker pool, store the envelope durably,
sign a receipt). The baseline, measured in the same run, is the same number of
``archive.put`` calls with the same pre-sealed envelopes and precomputed metadata (no
opening, no parsing): the ratio shows what opening and parsing cost. Both run with one
uploader and with four concurrent uploaders (the HTTP service's threads), each on a
fresh archive (on disk, ``/var/tmp``), median of three; the plaintext quarantine is on
tmpfs (``/dev/shm``) as recommended. The pool alone is compared with parsing in-process:
four threads at once, and one parse at a time (with the workers' CPU per parse).

Goal: the pool parses at least 200 small instances/s on 2 cores.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from benchmarks._support import cpu_by_role
from usreview.envelope import ReplayCache, generate_keys, seal_file
from usreview.ingest import Ingestor, WorkerPool
from usreview.ingest.worker import parse_file
from usreview.simulate import simulate
from usreview.store import Archive, InstanceMetadata

N = 200
REPEATS = 3
POOL_GOAL = 200.0


def _instances(folder: Path, n: int) -> list[Path]:
    template = pydicom.dcmread(simulate("bmode", folder / "template", seed=7)[0])
    paths = []
    for i in range(n):
        uid = generate_uid()
        template.SOPInstanceUID = uid
        template.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"IM{i:04d}.dcm"
        template.save_as(path)
        paths.append(path)
    return paths


def _workers_cpu() -> float:
    """CPU seconds used so far by this process's parsing workers."""
    return cpu_by_role(os.getpid(), (("_worker_main", "workers"),)).get("workers", 0.0)


def _put(archive: Archive, metadata: dict[Path, InstanceMetadata], envelope: Path) -> object:
    return archive.put("site-a", envelope, metadata[envelope])


def _timed(run: Callable[[Path], object], items: list[Path], threads: int) -> float:
    start = time.perf_counter()
    if threads == 1:
        for item in items:
            run(item)
    else:
        with ThreadPoolExecutor(threads) as executor:
            list(executor.map(run, items))
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        hub, site = generate_keys("hub"), generate_keys("site-a")
        plain = _instances(work / "plain", N)
        mb = sum(p.stat().st_size for p in plain) / 1e6
        (work / "env").mkdir()
        envelopes = [work / "env" / f"{p.stem}.env" for p in plain]
        start = time.perf_counter()
        for src, dst in zip(plain, envelopes, strict=True):
            seal_file(src, dst, sender=site, recipients=[hub.public])
        seal_s = time.perf_counter() - start
        metadata = {}
        for src, env in zip(plain, envelopes, strict=True):
            data = src.read_bytes()
            info = parse_file(str(src), 1 << 30)
            metadata[env] = InstanceMetadata(
                sop_instance_uid=info["sop_instance_uid"],
                study_instance_uid=info["study_instance_uid"],
                series_instance_uid=info["series_instance_uid"],
                sop_class_uid=info["sop_class_uid"],
                kinds=info["kinds"],
                plaintext_sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
            )
        print(f"{N} instances of {mb / N * 1000:.0f} KB; site seals {N / seal_s:.0f} inst/s")

        # Plaintext quarantine on tmpfs, as recommended (never on disk, fsync is free).
        shm = Path("/dev/shm")
        quarantine = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else work / "quarantine"
        with WorkerPool(2) as pool:
            pool.start()
            runs = 0

            def fresh(name: str) -> Archive:
                nonlocal runs
                runs += 1
                return Archive.open(None, work / f"{name}-{runs}")

            for threads in (1, 4):
                base_s, ingest_s = [], []
                for _ in range(REPEATS):
                    with fresh("put") as archive:
                        base_s.append(_timed(partial(_put, archive, metadata), envelopes, threads))
                    with fresh("ingest") as archive:
                        ingestor = Ingestor(
                            archive,
                            hub,
                            {"site-a": site.public},
                            ReplayCache(work / f"replay-{runs}.sqlite3"),
                            pool,
                            quarantine,
                        )
                        ingest_s.append(
                            _timed(partial(ingestor.ingest, "site-a"), envelopes, threads)
                        )
                        assert len(archive.receipts("site-a")) == N
                base, ingest = statistics.median(base_s), statistics.median(ingest_s)
                rate, put_rate = N / ingest, N / base
                print(
                    f"{threads} uploader(s): ingest {rate:4.0f} inst/s {mb / ingest:5.1f} MB/s"
                    f" | baseline put {put_rate:4.0f} inst/s {mb / base:5.1f} MB/s"
                    f" | ratio {base / ingest:.2f}"
                )

            start = time.perf_counter()
            for path in plain:
                parse_file(str(path), 1 << 30)
            inline = N / (time.perf_counter() - start)
            # One parse at a time, as on a quiet hub: what a parse costs in a worker.
            before = _workers_cpu()
            start = time.perf_counter()
            for path in plain:
                pool.parse(path)
            one = N / (time.perf_counter() - start)
            print(
                f"parse one at a time: pool {one:.0f} inst/s, "
                f"{(_workers_cpu() - before) / N * 1000:.2f} ms of worker CPU per parse "
                f"vs {1000 / inline:.2f} ms in-process"
            )
            lock = threading.Lock()
            queue = list(plain) * 2

            def drain() -> None:
                while True:
                    with lock:
                        if not queue:
                            return
                        item = queue.pop()
                    pool.parse(item)

            start = time.perf_counter()
            workers = [threading.Thread(target=drain) for _ in range(4)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            pooled = 2 * N / (time.perf_counter() - start)
            verdict = "ok" if pooled >= POOL_GOAL else "BELOW GOAL"
            print(
                f"parse: pool of 2 {pooled:.0f} inst/s vs in-process, 1 thread {inline:.0f} inst/s"
                f" | ratio {pooled / inline:.2f} | goal {POOL_GOAL:.0f} inst/s: {verdict}"
            )
        if quarantine.parent == shm:
            quarantine.rmdir()


if __name__ == "__main__":
    main()
