"""The service's start (:func:`usreview.hub.api.open_context`) after a crash.

Its parsing workers start first and import while the archive is opened and recovered;
the context does not wait for them. A start that fails stops them and releases the
state directory's lock, so that the next start is not held up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from usreview.dicom import read
from usreview.hub.api import open_context
from usreview.hub.api.app import _lock
from usreview.hub.api.settings import ServiceSettings
from usreview.simulate import simulate
from usreview.store import StorageError


def _workers() -> set[int]:
    """This process's children that are parsing workers."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"_worker_main" in cmdline:
            found.add(int(entry.name))
    return found


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


def test_a_failed_start_stops_its_workers_and_releases_the_lock(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    settings = ServiceSettings(parse_workers=2, database_url=f"sqlite:///{blocked}/index.sqlite3")
    with pytest.raises(StorageError, match="opening the archive"):
        open_context(tmp_path / "state", settings)
    assert _workers() == set()
    os.close(_lock(tmp_path / "state" / "service.lock", wait=0))  # free at once
