"""The gateway's upload process: uploads, receipts and results, beside the SCP's process.

The gateway (:mod:`usreview.site.gateway`) starts it as ``python -m usreview.site.worker
--config site.toml --notify-fd N`` and writes to the pipe ``N`` the file name of each
instance it spools, one per line (``*`` on a line: some names were dropped, rescan the
spool). This process:

- takes ``STATE/uploader.lock``, so one upload process works per site (one left by a
  gateway that was killed finishes its uploads in progress, then this one starts);
- removes from the spool what the hub's signed batch receipt says it already holds
  (:meth:`~usreview.site.uploader.Uploader.reconcile`), when the spool is not empty;
- uploads the spool (:class:`~usreview.site.uploader.Uploader`), woken by the names on
  the pipe, rescanning the spool every few seconds;
- follows the results feed (:class:`~usreview.site.results.ResultFollower`), started
  beside the uploads and independent of them: when it cannot start (a damaged
  ``STATE/replay.sqlite``, a folder it cannot write), the error is recorded in the
  status file, uploads go on, and it is tried again with a backoff of up to 10 minutes;
- keeps ``STATE/status.json`` and the per-study journal ``STATE/studies.jsonl``;
- stops when the pipe closes (the gateway stopped, or died) or on SIGTERM, after the
  uploads in progress. It ignores SIGINT: a terminal's Ctrl-C reaches the gateway too,
  which then stops it in order.

When it cannot go on (whatever the exception), it records ``TYPE: message`` in the
status file and prints it as its last line on stderr, which the gateway shows in the
status when it restarts it, then exits with status 1.

It runs at a lower CPU priority than the gateway: receiving from the scanners comes
first, uploads use what is left. An instance leaves the spool only on a verified receipt
naming its bytes, so either process may be killed at any moment without losing or
duplicating anything.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from usreview.errors import UsreviewError
from usreview.site.atrest import load_spool_cipher
from usreview.site.backoff import Backoff
from usreview.site.config import SiteConfig, load_config
from usreview.site.results import ResultFollower
from usreview.site.spool import Spool
from usreview.site.status import (
    UPLOAD_PROCESS_FAILED,
    UPLOADER_LOCK_FILE,
    StateLock,
    StatusBook,
)
from usreview.site.studies import StudyLog
from usreview.site.uploader import Uploader

__all__ = ["RESCAN", "describe", "main", "run_worker"]

_log = logging.getLogger(__name__)
#: A line of the pipe that asks for a rescan of the spool.
RESCAN = b"*"
#: Added to the process's nice value: scanners first.
NICENESS = 10
#: Backoff (seconds) between tries to start the results follower.
FOLLOWER_RETRY = (5.0, 600.0)


def run_worker(
    config: SiteConfig,
    notify_fd: int,
    *,
    workers: int = 2,
    stopping: threading.Event | None = None,
) -> None:
    """Upload the spool and follow the results until the pipe closes or ``stopping``.

    Raises
    ------
    SiteConfigError
        A key, the token or the certificate cannot be used.
    Exception
        Whatever else stops it; recorded in the status file first (``TYPE: message``).
        The results follower's failures are not among them: they are recorded, and it
        is started again later, while the uploads go on.
    """
    stopping = stopping or threading.Event()
    pipe = _Pipe(notify_fd, stopping)  # from now on, the pipe's end stops the process
    lock = StateLock(config.state, UPLOADER_LOCK_FILE)
    if not lock.try_acquire():
        _log.warning("waiting for the previous upload process to finish")
        while not lock.try_acquire():
            if stopping.wait(0.2):
                return
    status: StatusBook | None = None
    try:
        status = StatusBook(config.state)
        studies = StudyLog(config.state)  # one for both: one appending, compacting writer
        spool = Spool(config.spool, load_spool_cipher(config))
        uploader = Uploader(config, spool, status, workers=workers, studies=studies)
        try:
            removed = uploader.reconcile()
        except Exception as exc:  # the hub unreachable, or anything else: upload anyway
            _log.warning("the spool was not reconciled with the hub's receipts: %s", exc)
        else:
            if removed:
                _log.info("%d spooled instance(s) were already at the hub", removed)
        # Names read until now are in the spool, where the uploader's first scan finds them.
        pipe.attach(spool, uploader)
        uploader.start()
        results = _Results(config, status, studies) if config.follow_results else None
        try:
            while not stopping.wait(1.0):
                status.flush()
                studies.flush()
        finally:
            uploader.stop()
            if results is not None:
                results.stop()
            status.flush(force=True)
            studies.close()
    except Exception as exc:
        if status is not None:  # while this process holds the lock: its file to write
            status.error("upload process", describe(exc))
        raise
    finally:
        lock.release()


def describe(exc: BaseException) -> str:
    """``TYPE: message``: what the status file and the last line on stderr say."""
    return f"{type(exc).__name__}: {exc}"


class _Results:
    """The results follower, started in a thread of its own beside the uploads.

    Building it opens the replay cache, the inbox and the PACS queues; any failure there
    (whatever the exception) is recorded in the status file and tried again later, with
    a backoff of :data:`FOLLOWER_RETRY`, while the uploads go on.
    """

    def __init__(self, config: SiteConfig, status: StatusBook, studies: StudyLog) -> None:
        self.config = config
        self.status = status
        self.studies = studies
        self.follower: ResultFollower | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._start, name="results-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        backoff = Backoff(*FOLLOWER_RETRY)
        while not self._stopping.is_set():
            try:
                follower = ResultFollower(self.config, self.status, studies=self.studies)
                with self._lock:
                    if not self._stopping.is_set():
                        follower.start()
                        self.follower = follower
                if self.follower is not follower:  # stopped meanwhile
                    follower.stop()
                    return
            except Exception as exc:
                delay = backoff.next_delay()
                message = f"the results follower cannot start: {describe(exc)}"
                _log.error("%s; uploads go on; next try in %.0f s", message, delay)
                self.status.follower("failed", describe(exc))
                self.status.error(
                    "results", f"{message}; uploads go on (next try in {delay:.0f} s)"
                )
                self._stopping.wait(delay)
            else:
                self.status.follower("running")
                return

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the follower (or stop trying to start it)."""
        with self._lock:
            self._stopping.set()
            follower = self.follower
        self._thread.join(timeout)
        if follower is not None:
            try:
                follower.stop()
            except Exception:
                _log.exception("stopping the results follower failed")


class _Pipe:
    """Reads the gateway's pipe in a thread; offers the names once an uploader is attached.

    Sets ``stopping`` when the pipe ends (the gateway closed it, or died).
    """

    def __init__(self, fd: int, stopping: threading.Event) -> None:
        self.fd = fd
        self.stopping = stopping
        self._sink: tuple[Spool, Uploader] | None = None
        self._thread = threading.Thread(target=self._read, name="notify", daemon=True)
        self._thread.start()

    def attach(self, spool: Spool, uploader: Uploader) -> None:
        """Offer the names read from now on to ``uploader``."""
        self._sink = (spool, uploader)

    def _read(self) -> None:
        pending = b""
        try:
            while True:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    return
                *lines, pending = (pending + chunk).split(b"\n")
                sink = self._sink
                if sink is not None:
                    self._offer(lines, *sink)
        except OSError as exc:
            _log.error("reading the gateway's pipe failed: %s", exc)
        finally:
            self.stopping.set()

    @staticmethod
    def _offer(lines: list[bytes], spool: Spool, uploader: Uploader) -> None:
        items = []
        for line in lines:
            if line == RESCAN:
                uploader.wake()
                continue
            item = spool.item(line.decode("ascii", "replace"))
            if item is not None:  # else gone already (the same bytes, acknowledged)
                items.append(item)
        uploader.offer(items)


def main(argv: list[str] | None = None) -> int:
    """The process's entry point (started by the gateway, not by people)."""
    parser = argparse.ArgumentParser(
        prog=f"{Path(sys.executable).name} -m usreview.site.worker",
        description="The upload process of 'usreview site gateway' (started by it).",
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--notify-fd", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    level = logging.getLevelName(args.log_level)
    logging.basicConfig(
        level=level if isinstance(level, int) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not isinstance(level, int) or level > logging.INFO:
        logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    try:
        config = load_config(args.config)
        run_worker(config, args.notify_fd, workers=args.workers, stopping=stopping)
    except Exception as exc:  # whatever it is: one line the gateway can show, exit 1
        if not isinstance(exc, UsreviewError):
            _log.error("the upload process failed", exc_info=exc)
        with contextlib.suppress(OSError):  # a gateway killed: nobody reads stderr
            print(f"{UPLOAD_PROCESS_FAILED}{describe(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
