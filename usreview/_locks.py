"""Whether another process holds a lock file (``flock``): a running service, gateway or
worker, as the commands that must not run beside it ask."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["lock_held"]


def lock_held(path: Path) -> bool:
    """Whether a process holds an exclusive ``flock`` on ``path`` (missing or unreadable:
    ``False``). The probe is a shared lock, released at once: two probes never see each
    other."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's lock
    return False
