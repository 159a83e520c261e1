"""Tasks and checks of the tests that no plaintext instance is left on disk by a task.

The tasks are named ``"module:function"`` for :func:`~usreview.processing.execution.execute_bytes`
(in this process, a subprocess or a Dask worker): ``peeking_task`` fails if the instance it
runs on is anywhere in the temporary folder while it runs, ``raising_task`` raises, and
``blocking_task`` blocks inside a processor (after reading the pixels) until killed,
having created the file ``$USREVIEW_TEST_READY``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import pydicom

from usreview.processing.execution import Outputs, execute_file
from usreview.processing.registry import Context, Registry, default_registry, processor
from usreview.processing.results import Output

PEEKING_TASK = "tests.plaintext_support:peeking_task"
RAISING_TASK = "tests.plaintext_support:raising_task"
BLOCKING_TASK = "tests.plaintext_support:blocking_task"


def plaintext_left(folder: Path, markers: list[bytes]) -> list[Path]:
    """What under ``folder`` is named ``usreview-task-*`` or is a file holding a marker."""
    found: list[Path] = []
    for path in folder.rglob("*"):
        if path.name.startswith("usreview-task-"):
            found.append(path)
            continue
        with contextlib.suppress(OSError):  # a Dask worker's files come and go
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if any(marker in data for marker in markers):
                    found.append(path)
    return found


def uid_marker(path: str | Path) -> bytes:
    """The instance's SOP Instance UID, as its plaintext holds it."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID).encode()


def peeking_task(path: str) -> Outputs:
    """Fail if the plaintext is in the temporary folder; else run the pipeline."""
    left = plaintext_left(Path(tempfile.gettempdir()), [uid_marker(path)])
    if left:
        raise AssertionError(f"the plaintext instance is on disk while it runs: {left}")
    return execute_file(path)


def raising_task(path: str) -> Outputs:
    """Read the instance, then fail."""
    uid_marker(path)
    raise RuntimeError("a task that fails")


def blocking_task(path: str) -> Outputs:
    """Run the pipeline with a processor that reads the pixels, then blocks forever."""
    registry = Registry()
    for proc in default_registry():
        registry.register(proc)

    @processor("block_until_killed", kinds={"pw_doppler"}, version="1", registry=registry)
    def block(context: Context) -> Output:
        context.instance.frame(0)  # a numpy memmap of the file
        context.instance.frames()
        Path(os.environ["USREVIEW_TEST_READY"]).write_text(path)
        while True:
            time.sleep(1)

    return execute_file(path, registry)
