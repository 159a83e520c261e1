"""The parsing pool's start: it does not hold up the server, and workers start lean.

After a crash the service binds its port while its parsing workers are still importing;
an upload that arrives first waits for its worker. Each worker is a fresh interpreter
that does not run the server's main module again (multiprocessing's *spawn* would: for
the service that is JupyterHub's client library, about two seconds per worker).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from usreview.dicom import read
from usreview.ingest import WorkerPool
from usreview.simulate import simulate


@pytest.fixture(scope="module")
def bmode(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate("bmode", tmp_path_factory.mktemp("bmode"), seed=5)[0]


def test_a_new_pool_does_not_wait_and_a_task_waits_for_its_worker(bmode: Path) -> None:
    started = time.monotonic()
    with WorkerPool(1, timeout=30) as pool:
        created = time.monotonic() - started
        parsed = pool.parse(bmode)  # the worker is still importing: this waits for it
        first = time.monotonic() - started
        again = time.monotonic()
        pool.parse(bmode)
        warm = time.monotonic() - again
    truth = read(bmode)
    assert (parsed.rows, parsed.columns) == (truth.rows, truth.columns)
    assert parsed.sop_instance_uid == truth.sop_instance_uid
    # creating the pool costs a process start, not the worker's imports
    assert created < first - warm, (created, first, warm)


def test_a_worker_does_not_run_the_parents_main_module(bmode: Path, tmp_path: Path) -> None:
    """A main module that records each run: the server's runs once, in the server."""
    runs = tmp_path / "runs.txt"
    main = tmp_path / "server_main.py"
    main.write_text(
        textwrap.dedent(
            f"""
            import sys
            with open({str(runs)!r}, "a") as out:
                out.write(__name__ + "\\n")
            if __name__ == "__main__":
                from usreview.ingest import WorkerPool
                with WorkerPool(2, timeout=30) as pool:
                    print(pool.parse(sys.argv[1]).rows, pool.parse(sys.argv[1]).rows)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(main), str(bmode)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = read(bmode).rows
    assert done.stdout.split() == [str(rows), str(rows)]
    assert runs.read_text().splitlines() == ["__main__"]


def test_a_worker_holds_no_key_or_database_code(bmode: Path) -> None:
    """The process that reads untrusted files has the DICOM reader's libraries mapped, not
    the cryptography that handles the hub's keys nor the archive's SQLAlchemy."""
    with WorkerPool(1, timeout=30) as pool:
        assert pool.parse(bmode).rows == read(bmode).rows
        [pid] = pool.pids
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    mapped = {line.split()[-1] for line in maps if ".so" in line}
    assert [p for p in mapped if "/numpy/" in p]  # the reader's
    assert not [p for p in mapped if "/cryptography/" in p or "/sqlalchemy/" in p]
