"""Parsers for worker-pool tests, imported by name inside the spawned workers.

A file whose name starts with ``sleep`` sleeps, ``spin`` burns CPU, ``exit`` ends the
worker with ``SystemExit``; any other file is parsed for real, and one whose name starts
with ``whoami`` gets the worker's process id as a warning, ``modules`` the reader's
modules loaded before the parse.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from usreview.ingest.worker import parse_file


def parse_or_misbehave(path: str, max_decoded_bytes: int) -> dict[str, Any]:
    """Misbehave as the file name says, else :func:`parse_file`."""
    name = Path(path).name
    if name.startswith("sleep"):
        time.sleep(120)
    if name.startswith("spin"):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pass
    if name.startswith("exit"):
        raise SystemExit(3)
    loaded = [m for m in ("usreview.dicom.reader", "pydicom", "numpy") if m in sys.modules]
    parsed = parse_file(path, max_decoded_bytes)
    if name.startswith("modules"):
        parsed["warnings"].append(f"loaded before {','.join(loaded)}")
    if name.startswith("whoami"):
        parsed["warnings"].append(f"worker {os.getpid()}")
    return parsed
