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

The gateway's process records in ``STATE/gateway.json`` (:class:`~usreview.site.status.
GatewayBook`) what only it sees: its upload process (running, restarting, how often, and
why it last ended: its exit status and last line on stderr, which it relays to its own)
and the scanners it refused (a C-STORE answered with a failure, an association
rejected), which ``usreview site status`` shows and ``--check`` raises.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import IO, Any

from pynetdicom import evt

from usreview.site.atrest import load_spool_cipher
from usreview.site.backoff import Backoff
from usreview.site.client import HubClient
from usreview.site.config import SiteConfig
from usreview.site.cursor import load_cursor
from usreview.site.dicomtls import server_context
from usreview.site.errors import SiteConfigError
from usreview.site.scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    StorageSCP,
)
from usreview.site.spool import Spool, SpooledInstance
from usreview.site.status import (
    HEALTHY_RUN,
    UPLOAD_PROCESS_FAILED,
    UPLOADER_LOCK_FILE,
    GatewayBook,
    StateLock,
    StatusBook,
)

__all__ = ["Gateway", "UploadProcess", "run_gateway"]

_log = logging.getLogger(__name__)
WORKER_MODULE = "usreview.site.worker"
#: Characters of the upload process's last line on stderr kept in the status.
_LAST_LINE = 500


class _StderrRelay:
    """Copies an upload process's stderr to the gateway's, keeping its last line."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.last = ""
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="upload-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        out = getattr(sys.stderr, "buffer", None)
        try:
            for line in iter(self._stream.readline, b""):
                with contextlib.suppress(OSError, ValueError):  # our stderr closed: go on
                    if out is not None:
                        out.write(line)
                        out.flush()
                    else:
                        sys.stderr.write(line.decode("utf-8", "replace"))
                        sys.stderr.flush()
                text = line.decode("utf-8", "replace").strip()
                if text:
                    self.last = text[:_LAST_LINE]
        finally:
            self._stream.close()

    def join(self, timeout: float) -> str:
        """Wait for the end of the stream; its last non-empty line."""
        self._thread.join(timeout)
        return self.last


def _ended(code: int, last_line: str) -> str:
    """Why an upload process ended: its exit status (or signal) and, when it failed,
    its last line on stderr."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    if code > 0 and last_line:
        return f"exit status {code}: {last_line.removeprefix(UPLOAD_PROCESS_FAILED)}"
    return f"exit status {code}"


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
    book
        Where its state and why it ended are recorded (default: the state folder's
        ``gateway.json``).
    """

    def __init__(
        self,
        config: SiteConfig,
        *,
        workers: int = 2,
        restart_initial: float = 0.5,
        restart_max: float = 30.0,
        book: GatewayBook | None = None,
    ) -> None:
        self.config = config
        self.workers = workers
        self.book = book if book is not None else GatewayBook(config.state)
        self.restarts = 0
        self._backoff = Backoff(restart_initial, restart_max)
        self._lock = threading.Lock()  # the pipe's write end and the process
        self._write_fd: int | None = None
        self._missed = False
        self._process: subprocess.Popen[bytes] | None = None
        self._relay: _StderrRelay | None = None
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
        self.book.upload_process("stopped", pid=None)
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
            # Its output goes where the gateway's goes (stderr through a relay, which
            # keeps its last line); in the gateway's process group, so a terminal's
            # Ctrl-C or a group kill reaches it too.
            process = subprocess.Popen(
                self._command(read_fd),
                pass_fds=(read_fd,),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        assert process.stderr is not None
        relay = _StderrRelay(process.stderr)
        with self._lock:
            old, self._write_fd = self._write_fd, write_fd
            self._process = process
            self._relay = relay
            if self._stopping.is_set():  # stop() ran meanwhile: this one stops at once
                self._write_fd = None
                os.close(write_fd)
        if old is not None:
            os.close(old)
        self.book.upload_process("running", pid=process.pid, restarts=self.restarts)
        _log.info("upload process %d started", process.pid)

    def _watch(self) -> None:
        process, relay = self._process, self._relay
        failures = 0  # ends in a row without a healthy run
        while process is not None:
            started = time.monotonic()
            code = process.wait()
            last_line = relay.join(2.0) if relay is not None else ""
            if self._stopping.is_set():
                return
            if time.monotonic() - started > HEALTHY_RUN:
                self._backoff.reset()
                failures = 0
            failures += 1
            why = _ended(code, last_line)
            message = f"the upload process ended ({why})"
            while True:
                delay = self._backoff.next_delay()
                _log.error("%s; restarting it in %.1f s", message, delay)
                self._record(f"{message}; restarting it in {delay:.1f} s")
                last_exit = {"at": time.time(), "code": code, "reason": why}
                self.book.upload_process(
                    "restarting", pid=None, failures=failures, last_exit=last_exit
                )
                if self._stopping.wait(delay):
                    return
                try:
                    self._spawn()
                except OSError as exc:
                    why = f"cannot start the upload process ({exc})"
                    message = why
                    continue
                break
            self.restarts += 1
            self.book.upload_process("running", restarts=self.restarts)
            process, relay = self._process, self._relay

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


class _ObservedSCP(StorageSCP):
    """The Storage SCP, recording each scanner it refuses in the gateway's book: a
    C-STORE answered with a failure (the scanner keeps the instance) or an association
    rejected (an AE title not allowed or not the gateway's)."""

    def __init__(self, *args: Any, book: GatewayBook, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.book = book

    def start(self, host: str, port: int) -> None:
        super().start(host, port)
        assert self._server is not None
        self._server.bind(evt.EVT_REJECTED, self._on_rejected)

    def _on_store(self, event: evt.Event) -> int:
        status = super()._on_store(event)
        if status != STATUS_SUCCESS:
            try:
                calling = str(event.assoc.requestor.ae_title).strip()
                self.book.scanner_refused(status, self._store_refusal(event, status), calling)
            except Exception:  # the record is lost, never the scanner's answer
                _log.exception("recording a refused C-STORE failed")
        return status

    def _store_refusal(self, event: evt.Event, status: int) -> str:
        """Why a C-STORE was refused, for the status."""
        if status == STATUS_CANNOT_UNDERSTAND:
            return (
                "C-STORE refused (0xC000, cannot understand): its SOP Instance UID is not a "
                "DICOM UID, or the request is malformed; the scanner should not send it again"
            )
        if status != STATUS_OUT_OF_RESOURCES:
            return f"C-STORE refused (0x{status:04X})"
        try:
            free = shutil.disk_usage(self.spool.root).free
            request: Any = event.request  # a C-STORE request
            with request.DataSet.getbuffer() as data:
                size = data.nbytes
        except (OSError, AttributeError, ValueError):
            free, size = None, 0
        if free is not None and free - size < self.min_free_bytes:
            return (
                f"C-STORE refused (0xA700, out of resources): the spool's disk has "
                f"{free // 10**6} MB free, below the {self.min_free_bytes // 10**6} MB kept "
                "free (gateway.min_free_mb); the scanner keeps the instance: free space, or "
                "let the uploads drain the spool"
            )
        return (
            "C-STORE refused (0xA700, out of resources): the spool could not be written "
            "(see the gateway's log); the scanner keeps the instance"
        )

    def _on_rejected(self, event: evt.Event) -> None:
        """An association rejected: say which AE title, and which setting."""
        try:
            calling = str(event.assoc.requestor.ae_title).strip()
            primitive = event.assoc.requestor.primitive
            called = str(getattr(primitive, "called_ae_title", "") or "").strip()
            allowed = [title.strip() for title in self.ae.require_calling_aet]
            if allowed and calling not in allowed:
                reason = (
                    f"association rejected: calling AE title {calling!r} is not in "
                    "gateway.allowed_calling_ae_titles"
                )
            elif called != self.ae.ae_title.strip():
                reason = (
                    f"association rejected: the scanner called AE title {called!r}, not the "
                    f"gateway's {self.ae.ae_title.strip()!r} (gateway.ae_title)"
                )
            else:
                reason = "association rejected (too many associations at once)"
            self.book.scanner_refused(0, reason, calling)
        except Exception:
            _log.exception("recording a rejected association failed")


def _check_bind(config: SiteConfig) -> None:
    """Resolve ``gateway.bind`` before anything listens.

    Raises
    ------
    SiteConfigError
        The name does not resolve (the message names the setting).
    """
    try:
        socket.getaddrinfo(config.bind, config.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise SiteConfigError(
            f"{config.path}: gateway.bind: {config.bind!r} cannot be resolved "
            f"({getattr(exc, 'strerror', None) or exc}); write an address of this machine "
            "(0.0.0.0: every interface)",
            "gateway.bind",
        ) from None


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
            _check_bind(config)
            HubClient(config).close()  # token and pinned certificate usable
            config.load_private_keys()  # the upload process needs them: checked now
            config.load_retired_private_keys()  # the results follower needs them too
            config.load_hub_key()
            if config.follow_results:
                load_cursor(config)  # a damaged or lost results cursor: refuse, say why
            self.spool = Spool(config.spool, load_spool_cipher(config))
            self.book = GatewayBook(config.state)
            self.scp = _ObservedSCP(
                book=self.book,
                spool=self.spool,
                ae_title=config.ae_title,
                allowed_calling_ae_titles=config.allowed_calling_ae_titles,
                ssl_context=server_context(config),
                min_free_bytes=config.min_free_bytes,
            )
            self.uploads = UploadProcess(config, workers=upload_workers, book=self.book)
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
            except OSError as exc:
                self.uploads.stop()
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                raise SiteConfigError(
                    f"{self.config.path}: gateway.bind: {self.config.bind} is not an address "
                    "of this machine (0.0.0.0: every interface)",
                    "gateway.bind",
                ) from None
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
                self.book.flush(force=True)
        finally:
            self._lock.release()


def run_gateway(config: SiteConfig, *, announce: Callable[[str], None] | None = None) -> None:
    """Run a gateway until SIGINT or SIGTERM.

    Raises
    ------
    SiteConfigError
        A setting that cannot work (named), before anything listens; ``gateway.bind``
        when it does not resolve or is not an address of this machine.
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
            gateway.book.flush()  # the scanners refused, at most every second
    finally:
        gateway.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
