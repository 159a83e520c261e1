"""Several processes serving one port: a supervisor forks them and replaces one that dies.

A Python process runs its Python code on one core at a time (the GIL): with many sites
uploading at once, one service process is the queue while the machine's other cores
have time. :func:`supervise` forks ``processes`` workers from a process that has bound
their listening sockets already (the service gives each its own socket on the port,
with ``SO_REUSEPORT``, so that the kernel spreads the connections among them).

- A worker dies with its supervisor (``PR_SET_PDEATHSIG`` on Linux): a supervisor killed
  with ``kill -9`` leaves no worker holding the port, the state directory's lock or a
  half-done request's files (what any process killed mid-upload leaves is what recovery
  is for).
- The hub-managed services (this supervisor, the processing worker) get SIGTERM when
  their JupyterHub dies (:func:`die_with_hub`), as when it stops them itself.
- SIGINT or SIGTERM to the supervisor is passed on to every worker as SIGTERM; it
  returns once they have all exited.
- A worker that exits while the supervisor is not stopping is logged and started again
  after ``restart_delay`` seconds, with the same index; one that exits with an error
  within ``start_grace`` seconds of its start (it could not start: the archive cannot
  be opened, say) stops the others and the supervisor returns 1, rather than starting
  it again every second.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType

__all__ = ["HUB_PID_ENV", "RESTART_DELAY", "START_GRACE", "die_with_hub", "supervise"]

#: Seconds before a worker that died is started again.
RESTART_DELAY = 1.0
#: A worker failing this soon after its start could not start: the supervisor gives up.
START_GRACE = 5.0
_PR_SET_PDEATHSIG = 1
#: The pid of the JupyterHub process, given to its managed services.
HUB_PID_ENV = "USREVIEW_HUB_PID"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_KNOWN = frozenset(int(s) for s in signal.Signals)
_log = logging.getLogger("usreview.service")


def supervise(
    processes: int,
    run_worker: Callable[[int], int],
    *,
    restart_delay: float = RESTART_DELAY,
    start_grace: float = START_GRACE,
) -> int:
    """Run ``run_worker(index)`` in ``processes`` forked workers until told to stop.

    Call it from a process without threads (a fork copies only the calling thread).
    ``run_worker`` returns the worker's exit status; an exception is printed and exits 1.
    Returns 0 once a stop signal has been passed on and every worker has exited, 1 once
    a worker that could not start (see the module doc) and the others have exited.
    """
    if processes < 1:
        raise ValueError("processes must be at least 1")
    workers: dict[int, tuple[int, float]] = {}  # pid -> index, start time
    stopping = False
    failed = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            _signal(pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, stop) for signum in _STOP_SIGNALS}
    try:
        for index in range(processes):
            _start(index, run_worker, workers)
        while workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index, started = workers.pop(pid, (-1, 0.0))
            if index < 0 or stopping:
                continue
            exited = os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0  # not a signal
            if exited and time.monotonic() - started < start_grace:
                _log.error(
                    "service process %d (pid %d) could not start (%s): stopping the others",
                    index,
                    pid,
                    _describe(status),
                )
                failed = True
                stop(signal.SIGTERM, None)
                continue
            _log.error(
                "service process %d (pid %d) exited (%s); starting it again in %g s",
                index,
                pid,
                _describe(status),
                restart_delay,
            )
            time.sleep(restart_delay)
            if not stopping:
                _start(index, run_worker, workers)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 1 if failed else 0


def _start(
    index: int, run_worker: Callable[[int], int], workers: dict[int, tuple[int, float]]
) -> None:
    """Fork worker ``index``; a stop signal cannot fall between the fork and its record."""
    parent = os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the worker, which never returns here
            _worker(index, parent, run_worker)
        workers[pid] = (index, time.monotonic())
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _worker(index: int, parent: int, run_worker: Callable[[int], int]) -> None:
    code = 1
    try:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        if not _die_with(parent, signal.SIGKILL):
            os._exit(1)
        code = run_worker(index)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def die_with_hub() -> None:
    """In a hub-managed service: get SIGTERM when the JupyterHub that started it dies.

    JupyterHub starts its managed services in sessions of their own and stops them when
    it stops, but killed itself (``kill -9``, the OOM killer) it leaves them running,
    holding the state directory's lock, the sites' port and the archive: the next
    ``usreview hub`` could not start its own. The hub names itself in
    ``$USREVIEW_HUB_PID`` (:func:`usreview.hub.config.configure`); a service whose hub
    died before this call (while it imported) exits 1 at once. Without the variable
    (started from a shell, under systemd), this does nothing.
    """
    hub = os.environ.get(HUB_PID_ENV, "")
    if hub.isdigit() and not _die_with(int(hub), signal.SIGTERM):
        print(f"usreview: the hub that started this process (pid {hub}) is gone", file=sys.stderr)
        sys.exit(1)


def _die_with(parent: int, signum: int) -> bool:
    """Get ``signum`` when ``parent`` dies (Linux); False if it has died already."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: a killed parent leaves its children
        _log.warning("this process will not stop with its parent here")
    return os.getppid() == parent


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return f"signal {signal.Signals(number).name if number in _KNOWN else number}"
    return f"status {os.waitstatus_to_exitcode(status)}"
