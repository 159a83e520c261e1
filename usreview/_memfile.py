"""Memory files for plaintext patient data: nothing of it reaches a disk.

A memory file (:func:`os.memfd_create`, Linux) lives in RAM (swap at most), has no name in
any folder, and is freed by the kernel when its last descriptor closes, also when the
process holding it is killed (``kill -9``). The process reads it by name as
``/proc/self/fd/N`` (:func:`fd_path`): pydicom, ``numpy.memmap`` and a parsing worker that
received the descriptor all work from that name. The ingest opens small uploads into one
(:mod:`usreview.ingest.pipeline`), the processing task each instance it runs
(:func:`usreview.processing.execution.execute_bytes`).
"""

from __future__ import annotations

import io
import os

__all__ = ["AVAILABLE", "fd_path", "memory_file"]

#: Memory files exist and can be opened again by descriptor (Linux, with ``/proc``);
#: elsewhere callers keep plaintexts in a private folder of their own.
AVAILABLE: bool = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def memory_file(name: str = "usreview-plaintext") -> io.BufferedRandom:
    """A new empty memory file open for reading and writing, closed on exec.

    ``name`` only labels it in ``/proc/PID/fd``. Only call it when :data:`AVAILABLE`.
    """
    return open(os.memfd_create(name, os.MFD_CLOEXEC), "w+b")


def fd_path(fd: int) -> str:
    """The name by which this process opens its descriptor ``fd`` again."""
    return f"/proc/self/fd/{fd}"
