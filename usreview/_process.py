"""Ending one of the package's long-running processes without the interpreter's teardown."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = ["exit_now", "run_then_exit"]


def exit_now(code: int) -> NoReturn:
    """Flush the standard streams and the log handlers, then end the process with ``code``.

    Call it once the process has closed what it opened (archive, pools, sockets, private
    folders): what the interpreter's own teardown would add is freeing memory, module by
    module, which for a process that imported JupyterHub, SQLAlchemy or SciPy takes 0.3-1.3 s
    of CPU (several seconds at the processing worker's lower priority on a busy machine),
    while whoever stops it (the hub, a supervisor) waits. ``atexit`` handlers do not run.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def run_then_exit(main: Callable[[], int | None]) -> NoReturn:
    """Run a process's ``main`` (which returns or raises its exit status), then
    :func:`exit_now` with that status."""
    try:
        code = main() or 0
    except SystemExit as exc:  # a status, None (0) or a message (printed, 1)
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    exit_now(code)
