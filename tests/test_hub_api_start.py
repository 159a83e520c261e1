"""The service's start (:func:`usreview.hub.api.open_context`) after a crash.

Its parsing workers start first and import while the archive is opened and recovered;
the context does not wait for them. A start that fails stops them and releases the
state directory's lock, so that the next start is not held up. With several service
processes, the supervisor recovers the shared state (every process's leftovers
included) and holds the lock; each serving process empties only its own folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.site_helpers import children, command_line
from usreview.dicom import read
from usreview.hub.api import ServiceWorker, open_context, recover_shared_state
from usreview.hub.api.app import _lock
from usreview.hub.api.settings import ServiceSettings
from usreview.hub.errors import StateError
from usreview.simulate import simulate
from usreview.store import StorageError


def _workers() -> set[int]:
    """This process's children that are parsing workers."""
    return {pid for pid in children(os.getpid()) if b"_worker_main" in command_line(pid)}


def test_the_context_starts_its_workers_and_an_upload_waits_for_one(tmp_path: Path) -> None:
    bmode = simulate("bmode", tmp_path / "bmode", seed=7)[0]
    context = open_context(tmp_path / "state", ServiceSettings(parse_workers=2))
    try:
        assert set(context.pool.pids) == _workers() and len(_workers()) == 2
        parsed = context.pool.parse(bmode)
        assert parsed.sop_instance_uid == read(bmode).sop_instance_uid
    finally:
        context.close()
    assert _workers() == set()


def test_the_context_runs_as_many_blocking_calls_at_once_as_it_has_threads(
    tmp_path: Path,
) -> None:
    context = open_context(tmp_path / "state", ServiceSettings(parse_workers=1, threads=3))
    try:
        three = threading.Barrier(3, timeout=10)
        calls = [context.executor.submit(three.wait) for _ in range(3)]
        assert sorted(call.result() for call in calls) == [0, 1, 2]  # all three at once
        four = threading.Barrier(4, timeout=1)  # the fourth waits for a thread: never met
        calls = [context.executor.submit(four.wait) for _ in range(4)]
        assert all(isinstance(call.exception(), threading.BrokenBarrierError) for call in calls)
    finally:
        context.close()


def test_a_failed_start_stops_its_workers_and_releases_the_lock(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    settings = ServiceSettings(parse_workers=2, database_url=f"sqlite:///{blocked}/index.sqlite3")
    with pytest.raises(StorageError, match="opening the archive"):
        open_context(tmp_path / "state", settings)
    assert _workers() == set()
    os.close(_lock(tmp_path / "state" / "service.lock", wait=0))  # free at once


def test_several_processes_share_the_state_each_with_its_own_folders(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = ServiceSettings(processes=2, parse_workers=1, refusal_audit_burst=20)
    os.close(recover_shared_state(state, settings))
    # What crashed serving processes left: the supervisor's recovery removes all of it.
    left = [state / "spool" / "worker-0" / "a.upload", state / "quarantine" / "worker-1" / "b"]
    for path in left:
        path.parent.mkdir(mode=0o700)
        path.write_bytes(b"plaintext")
    lock_fd = recover_shared_state(state, settings)
    assert not any(path.exists() for path in left)
    with pytest.raises(StateError, match="another usreview service"):
        _lock(state / "service.lock", wait=0)  # the supervisor holds the state directory

    left[0].write_bytes(b"left by the previous serving process 0")
    in_flight = [state / "spool" / "worker-1" / "c.upload", state / "quarantine" / "worker-1" / "d"]
    for path in in_flight:  # serving process 1 is ingesting these
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_bytes(b"uploading")
    context = open_context(state, settings, worker=ServiceWorker(0, lock_fd))
    try:
        assert all(path.exists() for path in in_flight)  # process 0 left them alone
        assert context.spool == state / "spool" / "worker-0" and not left[0].exists()
        assert context.ingestor.quarantine_dir == state / "quarantine" / "worker-0"
        assert context.refusals.burst == 10  # the service's allowance, shared
        assert context.refusals.per_minute == settings.refusal_audit_per_minute / 2
    finally:
        context.close()  # the last holder of the lock lets it go
    os.close(_lock(state / "service.lock", wait=0))


def test_service_processes_default_to_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, processes, parse_workers in ((1, 2, 2), (2, 4, 2), (8, 4, 2), (16, 4, 4)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        settings = ServiceSettings()
        assert (settings.processes, settings.parse_workers) == (processes, parse_workers)
    assert ServiceSettings(processes=1).parse_workers == 16


def test_the_service_starts_without_the_processors() -> None:
    """A restarted service answers sooner when it does not import what it never runs:
    the processors and scipy (the processing worker's), nor the API when an
    administration command only needs the settings."""
    code = (
        "import sys, usreview.hub.service, usreview.hub.api.app;"
        "print(sorted(m for m in ('scipy', 'usreview.processing.analyze',"
        " 'usreview.processing.execution') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]"
    admin = "import sys, usreview.hub.conflicts; print('tornado' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", admin], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "False"
