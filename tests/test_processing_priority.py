"""The processing worker yields the CPU to ingest, also under autogroup scheduling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from usreview.processing.worker import NICENESS

AUTOGROUP = Path("/proc/self/autogroup")
pytestmark = pytest.mark.skipif(not AUTOGROUP.exists(), reason="no autogroup scheduling here")

_PROBE = (
    "import os\n"
    "from usreview.processing.worker import lower_priority\n"
    "lower_priority()\n"
    "print(os.nice(0))\n"
    "print(open('/proc/self/autogroup').read().strip() or 'default')\n"
)


def _probe(*, new_session: bool) -> tuple[int, str]:
    """(nice, autogroup line) of a process that called ``lower_priority``."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=new_session,
        timeout=60,
    ).stdout.split("\n", 1)
    return int(out[0]), out[1].strip()


def test_session_leader_lowers_its_autogroup() -> None:
    # As under the hub, which starts each service in its own session.
    nice, group = _probe(new_session=True)
    assert nice == NICENESS
    assert group.split()[-1] == str(NICENESS)


def test_process_in_a_shared_session_leaves_the_session_alone() -> None:
    # A process in the kernel's default group (never in a new session since boot, as
    # under some container runtimes and CI runners) reads an empty line.
    before = AUTOGROUP.read_text().strip() or "default"
    nice, group = _probe(new_session=False)
    assert nice == NICENESS
    assert group == before
    assert (AUTOGROUP.read_text().strip() or "default") == before
