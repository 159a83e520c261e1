"""Group commit: concurrent puts into the archive, against the same puts one at a time.

N puts of a 300 KB envelope (random bytes: the archive does not open it) with their
metadata, as 60 sites sending 60 studies, go into a fresh archive from 16 threads (the
service's threads, which share transactions: :class:`~usreview._group_commit.GroupCommit`)
and, as the baseline in the same run, from one thread (a transaction and its fsync per
put). Median of three runs each. The index is SQLite in the archive, or the database of
``$USREVIEW_BENCH_DB_URL`` (a PostgreSQL URL such as ``postgresql://USER@HOST/DB``; its
tables are created if missing and the rows are left there).

Prints instances/s, CPU per put and the mean batch size; the ratio is concurrent over
one at a time.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom.uid import generate_uid

from usreview.dicom.enum import ImageKind
from usreview.store import Archive, InstanceMetadata

N = 600
THREADS = 16
SITES = 60
REPEATS = 3
_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage


def _puts(n: int) -> list[tuple[str, InstanceMetadata]]:
    studies = [generate_uid() for _ in range(SITES)]
    series = [generate_uid() for _ in range(SITES)]
    return [
        (
            f"site-{i % SITES:02d}",
            InstanceMetadata(
                sop_instance_uid=generate_uid(),
                study_instance_uid=studies[i % SITES],
                series_instance_uid=series[i % SITES],
                sop_class_uid=_SOP_CLASS,
                kinds=(ImageKind.BMODE,),
                plaintext_sha256=hashlib.sha256(str(i).encode()).hexdigest(),
                size=300_000,
            ),
        )
        for i in range(n)
    ]


def _run(url: str | None, root: Path, threads: int, envelope: bytes) -> tuple[float, float, float]:
    """Instances/s, CPU ms per put and mean batch size of N puts from ``threads``."""
    puts = _puts(N)
    with Archive.open(url, root) as archive:
        start, cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(threads) as executor:
            results = list(executor.map(lambda p: archive.put(p[0], envelope, p[1]), puts))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert not any(r.duplicate for r in results)
        group = archive._group
        return N / wall, cpu / N * 1000, group.items / max(group.batches, 1)


def main() -> None:
    url = os.environ.get("USREVIEW_BENCH_DB_URL") or None
    envelope = os.urandom(300_000)
    where = "PostgreSQL" if url else "SQLite"
    print(f"{N} puts of 300 KB from {SITES} sites; index on {where}; median of {REPEATS}")
    with tempfile.TemporaryDirectory(prefix="bench-puts-", dir="/var/tmp") as tmp:
        runs: dict[int, list[tuple[float, float, float]]] = {THREADS: [], 1: []}
        for r in range(REPEATS):
            for threads in runs:
                runs[threads].append(_run(url, Path(tmp) / f"{threads}-{r}", threads, envelope))
        rates = {}
        for threads, measured in runs.items():
            rate, cpu, batch = (statistics.median(m[i] for m in measured) for i in range(3))
            rates[threads] = rate
            print(
                f"{threads:2d} thread(s): {rate:4.0f} instances/s, {cpu:.2f} ms CPU per put, "
                f"{batch:.1f} puts per transaction"
            )
        print(f"ratio {THREADS} threads / 1 thread: {rates[THREADS] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
