"""The supervisor of several service processes (:mod:`usreview.hub.supervisor`), with real forks.

Each test runs a supervisor in its own interpreter whose workers write their index and
pid to a file and then sleep until they are signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.site_helpers import alive, wait_until
from usreview.hub.supervisor import supervise

_SUPERVISOR = """
import os, sys, time
from usreview.hub.supervisor import supervise

def work(index):
    with open(sys.argv[1], "a") as out:
        out.write(f"{index} {os.getpid()}\\n")
    if index == int(sys.argv[2]):
        print("worker cannot start", file=sys.stderr)
        return 1
    time.sleep(600)
    return 0

sys.exit(supervise(2, work, restart_delay=0.1))
"""


def _started(log: Path) -> list[tuple[int, int]]:
    """(index, pid) of every worker started so far."""
    if not log.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in log.read_text().splitlines())]


def _wait(condition: object, timeout: float = 20.0) -> None:
    wait_until(condition, timeout=timeout, step=0.02)


@contextmanager
def _supervisor(
    tmp_path: Path, failing: int = -1
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A running supervisor of 2 workers; with ``failing``, that worker exits with 1 (the
    other may then be stopped before it wrote its line, so none is waited for)."""
    log = tmp_path / "workers.log"
    process = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR, str(log), str(failing)], stderr=subprocess.PIPE
    )
    try:
        if failing < 0:
            _wait(lambda: len(_started(log)) == 2)
        yield process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_a_stop_signal_reaches_every_worker_and_the_supervisor_returns(tmp_path: Path) -> None:
    with _supervisor(tmp_path) as (supervisor, log):
        workers = _started(log)
        assert sorted(index for index, _ in workers) == [0, 1]
        assert all(alive(pid) for _, pid in workers)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 0
        _wait(lambda: not any(alive(pid) for _, pid in workers))


def test_a_worker_that_dies_is_started_again_with_its_index(tmp_path: Path) -> None:
    with _supervisor(tmp_path) as (supervisor, log):
        (index, victim), (_, survivor) = _started(log)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(_started(log)) == 3)
        again, replacement = _started(log)[2]
        assert again == index and replacement != victim
        assert alive(replacement) and alive(survivor)
        assert supervisor.poll() is None
        supervisor.send_signal(signal.SIGINT)
        assert supervisor.wait(timeout=20) == 0
        _wait(lambda: not alive(replacement) and not alive(survivor))


def test_workers_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    with _supervisor(tmp_path) as (supervisor, log):
        workers = [pid for _, pid in _started(log)]
        supervisor.kill()
        supervisor.wait()
        _wait(lambda: not any(alive(pid) for pid in workers), timeout=10)


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    with _supervisor(tmp_path, failing=1) as (supervisor, log):
        assert supervisor.wait(timeout=20) == 1
        assert supervisor.stderr is not None
        assert "worker cannot start" in supervisor.stderr.read().decode()
        started = _started(log)
        # Each worker started at most once (the failing one not again), the failing one once.
        assert sorted(index for index, _ in started) in ([1], [0, 1]), started
        _wait(lambda: not any(alive(pid) for _, pid in started))


def test_at_least_one_process() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        supervise(0, lambda index: 0)
