"""A processing task leaves no plaintext instance (patient data) on disk, whatever happens.

:func:`~usreview.processing.execution.execute_bytes` (the Dask workers' entry point) keeps
the instance in a memory file: nothing appears in the temporary folder (``$TMPDIR``, a
fresh folder here) while the task runs, after it returns or raises, nor after the process
running it is killed with SIGKILL inside a processor. Without memory files, the instance
goes to a private folder that drops what a killed process left. The Dask path is checked
against a real cluster in ``test_processing_queue_dask.py``.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.plaintext_support import (
    BLOCKING_TASK,
    PEEKING_TASK,
    RAISING_TASK,
    plaintext_left,
    uid_marker,
)
from usreview import _memfile
from usreview.processing.execution import DEFAULT_TASK, execute_bytes
from usreview.simulate import simulate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty temporary folder for this process and its children."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads $TMPDIR again
    assert tempfile.gettempdir() == str(folder)
    return folder


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A simulated PW instance, outside the temporary folder."""
    return simulate("pw", tmp_path / "sim", seed=3)[0]


def test_execute_bytes_keeps_the_plaintext_off_the_temporary_folder(
    tmpdir_env: Path, source: Path
) -> None:
    marker = uid_marker(source)
    outputs = execute_bytes(PEEKING_TASK, source.read_bytes())  # peeks while it runs
    assert outputs.sop_instance_uid == marker.decode()
    assert outputs.sr is not None and outputs.derived  # pixels were read (memmap too)
    with pytest.raises(RuntimeError, match="a task that fails"):
        execute_bytes(RAISING_TASK, source.read_bytes())
    assert plaintext_left(tmpdir_env, [marker]) == []
    assert list(tmpdir_env.iterdir()) == []


def test_a_task_killed_inside_a_processor_leaves_no_plaintext(
    tmp_path: Path, tmpdir_env: Path, source: Path
) -> None:
    ready = tmp_path / "ready"
    code = (
        "import sys; from pathlib import Path; "
        "from usreview.processing.execution import DEFAULT_TASK, execute_bytes; "
        "execute_bytes(sys.argv[1], Path(sys.argv[2]).read_bytes())"
    )
    env = {**os.environ, "USREVIEW_TEST_READY": str(ready)}
    process = subprocess.Popen(
        [sys.executable, "-c", code, BLOCKING_TASK, str(source)], cwd=REPO, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert process.poll() is None, "the task ended before its processor blocked"
            assert time.monotonic() < deadline, "the processor never started"
            time.sleep(0.1)
        marker = uid_marker(source)
        assert plaintext_left(tmpdir_env, [marker]) == []  # while it blocks
        assert ready.read_text().startswith("/proc/self/fd/") or not _memfile.AVAILABLE
    finally:
        os.kill(process.pid, signal.SIGKILL)  # the subprocess this test started
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    assert plaintext_left(tmpdir_env, [marker]) == []
    assert list(tmpdir_env.iterdir()) == []


def test_without_memory_files_a_private_folder_drops_what_killed_tasks_left(
    tmpdir_env: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_memfile, "AVAILABLE", False)
    folder = tmpdir_env / f"usreview-plaintext-{os.getuid()}"
    folder.mkdir(mode=0o755)
    stale, recent = folder / "stale.dcm", folder / "recent.dcm"  # left by killed tasks
    for left in (stale, recent):
        left.write_bytes(b"plaintext")
    os.utime(stale, (time.time() - 2 * 3600, time.time() - 2 * 3600))
    outputs = execute_bytes(DEFAULT_TASK, source.read_bytes())
    assert outputs.sop_instance_uid == uid_marker(source).decode()
    with pytest.raises(RuntimeError, match="a task that fails"):
        execute_bytes(RAISING_TASK, source.read_bytes())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["recent.dcm"]  # a running task's?
    assert [p.name for p in tmpdir_env.iterdir()] == [folder.name]


def test_the_private_folder_must_be_a_folder_of_this_user(
    tmp_path: Path, tmpdir_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_memfile, "AVAILABLE", False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmpdir_env / f"usreview-plaintext-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="is not a folder of this user; remove it"):
        execute_bytes(RAISING_TASK, b"plaintext")
    assert list(elsewhere.iterdir()) == []
