"""The package's long-running processes: their open files limit, their end without the
interpreter's teardown."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = ["OPEN_FILES", "exit_now", "raise_open_files_limit", "run_then_exit"]

#: Open files a serving process asks for (sockets included), within the hard limit.
OPEN_FILES = 65536


def raise_open_files_limit(wanted: int = OPEN_FILES) -> int:
    """Raise this process's soft limit of open files to ``wanted`` (at most the hard
    limit, never lowering it); return the limit now in force.

    A service started with the usual soft limit of 1024 (systemd's default) runs out of
    descriptors with a few hundred connections (sites, the proxy's, local processes that
    hold them idle) plus its files, and then refuses connections it cannot accept.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


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
