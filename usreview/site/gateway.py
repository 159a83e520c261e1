"""The gateway: the Storage SCP in one process, uploads and results in a second one.

``usreview site gateway --config site.toml`` runs :func:`run_gateway` until SIGINT or
SIGTERM. It holds the state folder's lock, so a second gateway (or a ``pull``) on the
same site refuses to start. Everything it needs is checked before it listens: the
keys, the hub's key, the token, the allow-list.

The gateway process only receives: its SCP spools each instance durably and answers,
through the spool's write-ahead journal (:mod:`usreview.site.journal`: one fdatasync
shared by every association), which it replays at start-up before it listens.
Sealing, uploading, receipts and the results feed run in the upload process
(:mod:`usreview.site.worker`), which :class:`UploadProcess` starts, tells the name of
each instance spooled (through a pipe), restarts when it ends, and stops. In one
process, the uploads' sealing and HTTP held the interpreter lock that pynetdicom's
threads wait for on every PDU, and the scanner waited with them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from usreview.site.atrest import load_spool_cipher
from usreview.site.backoff import Backoff
from usreview.site.client import HubClient
from usreview.site.config import SiteConfig
from usreview.site.dicomtls import server_context
from usreview.site.scp import StorageSCP
from usreview.site.spool import Spool, SpooledInstance
from usreview.site.status import UPLOADER_LOCK_FILE, StateLock, StatusBook

__all__ = ["Gateway", "UploadProcess", "run_gateway"]

_log = logging.getLogger(__name__)
WORKER_MODULE = "usreview.site.worker"
#: A process that ran this long before it ended was working: restart it quickly.
_HEALTHY_RUN = 60.0


class UploadProcess:
    """The gateway's side of its upload process: start, notify, restart, stop.

    Parameters
    ----------
    config
        The site's configuration (the process reads the same ``site.toml``).
    workers
        Concurrent uploads in the process.
    restart_initial, restart_max
        Backoff between restarts after the process ended unexpectedly.
    """

    def __init__(
        self,
        config: SiteConfig,
        *,
        workers: int = 2,
        restart_initial: float = 0.5,
        restart_max: float = 30.0,
    ) -> None:
        self.config = config
        self.workers = workers
        self.restarts = 0
        self._backoff = Backoff(restart_initial, restart_max)
        self._lock = threading.Lock()  # the pipe's write end and the process
        self._write_fd: int | None = None
        self._missed = False
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The process id of the current upload process (None when there is none)."""
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        """Start the process, and a thread that restarts it whenever it ends."""
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="upload-process", daemon=True)
        self._watcher.start()

    def notify(self, item: SpooledInstance) -> None:
        """Tell the process that ``item`` is spooled; never blocks.

        When the pipe is full (or no process runs) the name is dropped and the next
        line asks for a rescan of the spool instead.
        """
        line = item.path.name.encode("ascii") + b"\n"
        with self._lock:
            if self._write_fd is None:
                self._missed = True
                return
            if self._missed:  # ask for a rescan (the pipe's lines: usreview.site.worker)
                line = b"*\n" + line
            try:
                os.write(self._write_fd, line)  # < PIPE_BUF: all of it or nothing
            except OSError:  # full (EAGAIN), or the process ended (EPIPE)
                self._missed = True
            else:
                self._missed = False

    def stop(self, timeout: float = 60.0) -> int | None:
        """Close the pipe (the process finishes its uploads in progress and exits).

        Killed after ``timeout`` seconds; returns its exit status (None if none ran).
        """
        self._stopping.set()
        with self._lock:
            process, fd, self._write_fd = self._process, self._write_fd, None
        if fd is not None:
            os.close(fd)
        code = None
        if process is not None:
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.warning("the upload process did not stop in %.0f s: killed", timeout)
                process.kill()
                code = process.wait()
        if self._watcher is not None:
            self._watcher.join(5)
        return code

    def _command(self, notify_fd: int) -> list[str]:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        return [
            sys.executable,
            "-m",
            WORKER_MODULE,
            "--config",
            str(self.config.path),
            "--notify-fd",
            str(notify_fd),
            "--workers",
            str(self.workers),
            "--log-level",
            str(level),
        ]

    def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        try:
            os.set_blocking(write_fd, False)
            # Its output goes where the gateway's goes; in the gateway's process group,
            # so a terminal's Ctrl-C or a group kill reaches it too.
            process = subprocess.Popen(
                self._command(read_fd), pass_fds=(read_fd,), stdin=subprocess.DEVNULL
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        with self._lock:
            old, self._write_fd = self._write_fd, write_fd
            self._process = process
            if self._stopping.is_set():  # stop() ran meanwhile: this one stops at once
                self._write_fd = None
                os.close(write_fd)
        if old is not None:
            os.close(old)
        _log.info("upload process %d started", process.pid)

    def _watch(self) -> None:
        process = self._process
        while process is not None:
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > _HEALTHY_RUN:
                self._backoff.reset()
            message = f"the upload process ended (exit status {code})"
            while True:
                delay = self._backoff.next_delay()
                _log.error("%s; restarting it in %.1f s", message, delay)
                self._record(f"{message}; restarting it in {delay:.1f} s")
                if self._stopping.wait(delay):
                    return
                try:
                    self._spawn()
                except OSError as exc:
                    message = f"cannot start the upload process ({exc})"
                    continue
                break
            self.restarts += 1
            process = self._process

    def _record(self, message: str) -> None:
        """Add ``message`` to the status file, if no upload process is writing it."""
        lock = StateLock(self.config.state, UPLOADER_LOCK_FILE)
        with contextlib.suppress(OSError):
            if lock.try_acquire():
                try:
                    book = StatusBook(self.config.state)
                    book.error("gateway", message)
                finally:
                    lock.release()


class Gateway:
    """A site's gateway; :meth:`start` it, then :meth:`stop` it.

    Parameters
    ----------
    config
        The site's configuration.
    upload_workers
        Concurrent uploads to the hub (in the upload process).
    """

    def __init__(self, config: SiteConfig, *, upload_workers: int = 2) -> None:
        self.config = config
        self._lock = StateLock(config.state)
        self._lock.acquire()
        try:
            HubClient(config).close()  # token and pinned certificate usable
            config.load_private_keys()  # the upload process needs them: checked now
            config.load_retired_private_keys()  # the results follower needs them too
            config.load_hub_key()
            self.spool = Spool(config.spool, load_spool_cipher(config))
            self.scp = StorageSCP(
                spool=self.spool,
                ae_title=config.ae_title,
                allowed_calling_ae_titles=config.allowed_calling_ae_titles,
                ssl_context=server_context(config),
                min_free_bytes=config.min_free_bytes,
            )
            self.uploads = UploadProcess(config, workers=upload_workers)
            self.spool.add_listener(self.uploads.notify)
        except BaseException:
            self._lock.release()
            raise

    def start(self) -> None:
        """Replay the spool's journal, start the upload process, then listen for scanners.

        Raises
        ------
        SpoolError
            The journal left by the last run cannot be replayed (kept; nothing listens).
        """
        self.spool.remove_leftovers()
        recovery = self.spool.open_journal()
        if recovery.restored:
            _log.warning(
                "%d instance(s) written to the spool again from its journal", recovery.restored
            )
        try:
            self.uploads.start()
            try:
                self.scp.start(self.config.bind, self.config.port)
            except BaseException:
                self.uploads.stop()
                raise
        except BaseException:
            self.spool.close_journal()
            raise

    def stop(self) -> None:
        """Stop listening, sync the spool, stop the upload process; release the state lock."""
        try:
            self.scp.stop()
            try:
                self.spool.close_journal()
            finally:
                self.uploads.stop()
        finally:
            self._lock.release()


def run_gateway(config: SiteConfig, *, announce: Callable[[str], None] | None = None) -> None:
    """Run a gateway until SIGINT or SIGTERM.

    Raises
    ------
    SiteConfigError
        A setting that cannot work (named), before anything listens.
    GatewayRunningError
        Another gateway holds the site's state folder.
    OSError
        The DICOM port cannot be bound.
    """
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    gateway = Gateway(config)
    try:
        gateway.start()
        depth, size = gateway.spool.depth()
        if announce is not None:
            tls = " (DICOM TLS)" if gateway.scp.ssl_context is not None else ""
            announce(
                f"gateway {config.name}: AE {config.ae_title} on {config.bind}:"
                f"{gateway.scp.port}{tls}; hub {config.hub_url}; spool {depth} instance(s) "
                f"({size / 1e6:.1f} MB) to upload"
            )
        while not stopping.wait(1.0):
            pass
    finally:
        gateway.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
