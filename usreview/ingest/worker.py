"""A pool of long-lived, resource-limited processes that parse untrusted DICOM files.

pydicom lets a dozen exception types through on hostile input and can try to allocate
hundreds of GiB, so the hub never parses an upload in its own process. Each worker is a
fresh interpreter (``python -c``: not forked from the threaded server, and, unlike
multiprocessing's *spawn*, not running the server's main module again, which for the
service would import JupyterHub's client and double a worker's start), imports the
reader once, then limits itself with ``setrlimit``: address space (its size after imports
plus ``memory_limit``), CPU time per task (``SIGXCPU`` ends it), and no core files (they
would hold patient data). Creating a pool does not wait for its workers: a task waits
for its worker to be ready.
A task sends a file path, or an open file descriptor (passed over the pipe with
``SCM_RIGHTS``: the hub's small uploads are opened into memory, never onto a disk, and
the worker reads that one file as ``/proc/self/fd/N``), and gets back a small dict, never
pixels: the UIDs, the image's shape and kinds, and the header's description of patient,
study and equipment (:data:`usreview.dicom.header.HEADER_FIELDS`, read tolerantly).

The parent gives each task a wall-clock ``timeout``: a worker that does not answer in
time is killed and replaced; a worker that dies (signal, rlimit) is replaced; after a
``MemoryError`` the worker retires itself. In all these cases the task fails with
:class:`~usreview.ingest.errors.RejectedInstanceError` and the pool keeps serving.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import multiprocessing
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from usreview._memfile import fd_path
from usreview.dicom.enum import ImageKind
from usreview.dicom.header import HEADER_FIELDS, header_fields
from usreview.ingest.errors import RejectedInstanceError, RejectReason, WorkerPoolError

if TYPE_CHECKING:
    from usreview.store import InstanceMetadata

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "ParsedInstance",
    "WorkerPool",
    "parse_file",
]

#: Address space a task may use beyond the worker's own size after imports (1.5 GiB).
DEFAULT_MEMORY_LIMIT = 3 * 512 * 1024**2
#: Cap on the declared decoded size of an upload (rows x columns x samples x bytes x frames).
DEFAULT_MAX_DECODED_BYTES = 1024**3
_PARSER = "usreview.ingest.worker:parse_file"
#: What a worker process runs; its connection's file descriptor follows as an argument.
_WORKER_MAIN = "from usreview.ingest.worker import _worker_main; _worker_main()"
_Parser = Callable[[str, int], dict[str, Any]]
#: The task message announcing a file descriptor sent right after it (``SCM_RIGHTS``).
_FD_TASK = ("fd",)


@dataclass(frozen=True, slots=True)
class ParsedInstance:
    """What a worker found in one plaintext instance (no pixels).

    ``header`` holds the header's description (:data:`HEADER_FIELDS`: patient, study,
    equipment), each ``None`` when absent; it goes to the archive with the UIDs.
    """

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    kinds: tuple[ImageKind, ...]
    number_of_frames: int
    rows: int
    columns: int
    transfer_syntax: str
    warnings: tuple[str, ...]
    header: Mapping[str, str | None] = field(default_factory=dict, hash=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParsedInstance:
        """Build from a worker's answer, checking every field's type.

        Raises
        ------
        RejectedInstanceError
            A field is missing or of the wrong type (reason ``invalid header``).
        """
        try:
            strings = {
                name: _typed(data[name], str)
                for name in (
                    "sop_instance_uid",
                    "study_instance_uid",
                    "series_instance_uid",
                    "sop_class_uid",
                    "transfer_syntax",
                )
            }
            numbers = {
                name: _typed(data[name], int) for name in ("number_of_frames", "rows", "columns")
            }
            kinds = tuple(ImageKind(_typed(k, str)) for k in data["kinds"])
            warnings = tuple(_typed(w, str) for w in data["warnings"])
            header = {
                name: None if data.get(name) is None else _typed(data[name], str)
                for name in HEADER_FIELDS
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise RejectedInstanceError(
                RejectReason.INVALID_HEADER, f"the parser's answer is malformed ({exc})"
            ) from None
        return cls(kinds=kinds, warnings=warnings, header=header, **strings, **numbers)

    def metadata(self, *, plaintext_sha256: str, size: int) -> InstanceMetadata:
        """The archive's metadata for this instance.

        Raises
        ------
        RejectedInstanceError
            A UID is missing or malformed (reason ``invalid header``).
        """
        from usreview.store import InstanceMetadata, InvalidMetadataError  # not in the workers

        try:
            return InstanceMetadata(
                sop_instance_uid=self.sop_instance_uid,
                study_instance_uid=self.study_instance_uid,
                series_instance_uid=self.series_instance_uid,
                sop_class_uid=self.sop_class_uid,
                kinds=self.kinds,
                plaintext_sha256=plaintext_sha256,
                size=size,
                **self.header,
            )
        except InvalidMetadataError as exc:
            raise RejectedInstanceError(RejectReason.INVALID_HEADER, str(exc)) from None


def _typed(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


# -- the worker side -----------------------------------------------------------------------


def parse_file(path: str, max_decoded_bytes: int) -> dict[str, Any]:
    """Read ``path``, decode its first and last frame, return its metadata as a dict.

    Runs inside a worker (it is also safe to call directly on trusted files).

    Raises
    ------
    InputError
        Whatever :func:`usreview.dicom.read` or frame decoding raises.
    """
    from usreview.dicom import read

    instance = read(path, max_decoded_bytes=max_decoded_bytes)
    instance.display_frame(0)
    if instance.number_of_frames > 1:
        instance.display_frame(instance.number_of_frames - 1)
    return {
        "sop_instance_uid": instance.sop_instance_uid,
        "study_instance_uid": instance.study_instance_uid,
        "series_instance_uid": instance.series_instance_uid,
        "sop_class_uid": str(instance.sop_class_uid),
        "kinds": [k.value for k in instance.kinds],
        "number_of_frames": instance.number_of_frames,
        "rows": instance.rows,
        "columns": instance.columns,
        "transfer_syntax": str(instance.transfer_syntax),
        "warnings": list(instance.warnings),
        **header_fields(instance.dataset),
    }


def _reason(exc: BaseException) -> RejectReason:
    from usreview import errors

    if not isinstance(exc, Exception):
        return RejectReason.WORKER_CRASHED  # SystemExit, KeyboardInterrupt in the parser
    if not isinstance(exc, errors.NotDicomError) and _caused_by(exc, MemoryError):
        return RejectReason.RESOURCE_LIMIT  # e.g. decoding a frame over the memory limit
    table: list[tuple[type[BaseException], RejectReason]] = [
        (errors.NotDicomError, RejectReason.NOT_DICOM),
        (errors.NotUltrasoundError, RejectReason.NOT_ULTRASOUND),
        (errors.UnsupportedTransferSyntaxError, RejectReason.UNSUPPORTED_TRANSFER_SYNTAX),
        (errors.ImageTooLargeError, RejectReason.IMAGE_TOO_LARGE),
        (errors.CorruptPixelDataError, RejectReason.CORRUPT_PIXEL_DATA),
        (RecursionError, RejectReason.RESOURCE_LIMIT),
        (errors.InputError, RejectReason.NOT_DICOM),
    ]
    # Anything else escaped while decoding pixels (the reader's own boundary is InputError).
    return next((r for kind, r in table if isinstance(exc, kind)), RejectReason.CORRUPT_PIXEL_DATA)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _vm_size() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _worker_main() -> None:
    """A worker process's entry: its connection is the file descriptor in ``argv``.

    The parent sends its ``sys.path`` (so a parser of the caller's, a test's, imports
    here too) and :func:`_serve`'s arguments first.
    """
    from usreview._process import exit_now

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = Connection(int(sys.argv[1]))
    try:
        search_path, *args = conn.recv()
    except (EOFError, OSError):
        exit_now(0)  # the parent is gone
    sys.path[:] = search_path
    _serve(conn, *args)
    exit_now(0)  # without the interpreter's teardown: the service waits for it


def _serve(
    conn: Connection, parser_spec: str, max_decoded_bytes: int, memory_limit: int, cpu: float
) -> None:
    """Worker main loop: limit this process, then answer one path at a time."""
    module, _, name = parser_spec.partition(":")
    parser: _Parser = getattr(importlib.import_module(module), name)
    import usreview.dicom.reader  # noqa: F401  (the reader, pydicom, numpy: before the limits)

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    baseline = _vm_size()
    if baseline:
        _limit(resource.RLIMIT_AS, baseline + memory_limit, hard_too=True)
    try:
        conn.send(("ready", os.getpid(), baseline))
    except OSError:
        return  # the parent died while this worker was starting
    while True:
        fd = None
        try:
            task = conn.recv()
            if task == _FD_TASK:  # the file's descriptor follows
                fd = recv_handle(conn)
        except (EOFError, OSError):
            return
        if task is None:
            return
        path = str(task) if fd is None else fd_path(fd)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _limit(resource.RLIMIT_CPU, math.ceil(usage.ru_utime + usage.ru_stime + cpu))
        try:
            conn.send(("ok", parser(path, max_decoded_bytes)))
        except BaseException as exc:
            # A refused huge allocation leaves the heap as it was; a worker still far
            # above its baseline after a MemoryError (or hit by a BaseException) retires.
            retire = not isinstance(exc, Exception) or (
                _caused_by(exc, MemoryError) and _vm_size() > baseline + memory_limit // 2
            )
            conn.send(("error", _reason(exc).value, _first_line(exc), retire))
            if retire:
                return
        finally:
            if fd is not None:
                os.close(fd)


def _limit(which: int, soft: int, *, hard_too: bool = False) -> None:
    """Lower the soft limit ``which`` to ``soft`` (and the hard one when asked)."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, soft if hard_too else hard))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -- the parent side -----------------------------------------------------------------------


class _Worker:
    """One worker process and the parent's end of its pipe (a socket pair).

    The process inherits only its end of the pipe and standard output and error; it
    ends when the pipe closes, so also when the parent dies.
    """

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.conn, child = multiprocessing.Pipe(duplex=True)
        try:
            fd = child.fileno()
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, str(fd)],
                stdin=subprocess.DEVNULL,
                pass_fds=(fd,),
            )
        except BaseException:
            self.conn.close()
            raise
        finally:
            child.close()
        with contextlib.suppress(OSError):  # it died at once: wait_ready says so
            self.conn.send((list(sys.path), *args))
        self.ready = False
        self.closed = False
        self.tasks = 0
        self.baseline = 0

    def wait_ready(self, timeout: float) -> None:
        if self.ready:
            return
        if not self.conn.poll(timeout):
            self.kill()
            raise WorkerPoolError(f"a parsing worker did not start within {timeout:g} s")
        try:
            tag, _pid, baseline = self.conn.recv()
        except (EOFError, OSError, ValueError, TypeError):
            self.kill()
            raise WorkerPoolError(
                f"a parsing worker failed to start (exit code {self.process.returncode})"
            ) from None
        if tag != "ready":
            self.kill()
            raise WorkerPoolError("a parsing worker answered before it was ready")
        self.ready, self.baseline = True, int(baseline)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def join(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the process to end; its exit code, or ``None``."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        return self.process.returncode

    def stop(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.join(timeout)
        self.kill()

    def kill(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.alive:
            with contextlib.suppress(OSError):
                self.process.kill()
        self.join(5)
        self.conn.close()


class _IdleWorkers(queue.Queue["_Worker | None"]):
    """The idle workers: the one that finished last is taken first, warm.

    One parse at a time, a worker that has just parsed costs 1.6-2.1 ms of CPU per parse,
    against 2.5 ms when the workers take turns (``python -m benchmarks ingest``); under
    load every worker works all the same. A worker still starting (a replacement) and an
    empty slot wait at the other end: they are taken only when no ready worker is idle, so
    that a replacement's start delays no task.
    """

    def _init(self, maxsize: int) -> None:
        self.queue: deque[_Worker | None] = deque()

    def _put(self, item: _Worker | None) -> None:
        if item is not None and item.ready:
            self.queue.append(item)
        else:
            self.queue.appendleft(item)

    def _get(self) -> _Worker | None:
        return self.queue.pop()


class WorkerPool:
    """Long-lived, resource-limited parsing processes, shared by threads.

    Parameters
    ----------
    size
        Number of worker processes (one per core is right).
    memory_limit
        Address space each task may use beyond the worker's size after imports, in
        bytes (``RLIMIT_AS``).
    cpu_seconds
        CPU time one task may use (``RLIMIT_CPU``, moved forward before each task).
    timeout
        Wall-clock seconds one task may take before its worker is killed and replaced.
    max_decoded_bytes
        Cap on an instance's declared decoded size, checked before decoding.
    max_tasks_per_worker
        A worker is replaced after this many tasks (bounds slow leaks).
    start_timeout
        Seconds a new worker may take to import and become ready.
    parser
        ``"module:function"`` run on each path in the worker; the default reads the
        instance and decodes its first and last frame. Tests pass their own.
    """

    def __init__(
        self,
        size: int = 2,
        *,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        cpu_seconds: float = 30.0,
        timeout: float = 60.0,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        max_tasks_per_worker: int = 10_000,
        start_timeout: float = 120.0,
        parser: str = _PARSER,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        if memory_limit < 16 * 1024**2 or cpu_seconds <= 0 or timeout <= 0:
            raise ValueError("memory_limit must be at least 16 MiB; cpu_seconds, timeout > 0")
        self.size = size
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.max_tasks_per_worker = max_tasks_per_worker
        self._args = (parser, max_decoded_bytes, memory_limit, cpu_seconds)
        self._idle = _IdleWorkers()
        self._lock = threading.Lock()
        self._all: set[_Worker] = set()
        self._closed = False
        #: Workers replaced so far (killed, died, retired).
        self.replaced = 0
        for _ in range(size):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        worker = _Worker(self._args)
        with self._lock:
            self._all.add(worker)
        return worker

    def start(self) -> None:
        """Wait until every worker is ready (optional: tasks wait for theirs)."""
        held = [self._acquire() for _ in range(self.size)]
        for worker in held:
            self._idle.put(worker)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        with self._lock:
            return sorted(w.process.pid for w in self._all)

    def _acquire(self) -> _Worker:
        """An idle, ready, live worker (one that died while idle is replaced first)."""
        for _ in range(self.size + 1):
            worker = self._acquire_one()
            if worker.alive:
                return worker
            self._retire(worker)
        raise WorkerPoolError("parsing workers keep dying while idle; see the hub's log")

    def _acquire_one(self) -> _Worker:
        if self._closed:
            raise WorkerPoolError("the parsing pool is closed")
        worker = self._idle.get()
        if self._closed:
            self._idle.put(worker)
            raise WorkerPoolError("the parsing pool is closed")
        try:
            if worker is None:  # an empty slot: a replacement failed to spawn earlier
                worker = self._spawn()
            worker.wait_ready(self.start_timeout)
        except (OSError, WorkerPoolError) as exc:
            if worker is not None:
                self._forget(worker)
            self._idle.put(None)
            if isinstance(exc, WorkerPoolError):
                raise
            raise WorkerPoolError(f"cannot start a parsing worker: {exc}") from exc
        return worker

    def _forget(self, worker: _Worker) -> None:
        with self._lock:
            self._all.discard(worker)
            self.replaced += 1

    def _retire(self, worker: _Worker, *, kill: bool = True) -> None:
        """End ``worker`` and put a fresh one (or an empty slot) in its place."""
        if kill:
            worker.kill()
        else:
            worker.stop()
        self._forget(worker)
        replacement: _Worker | None = None
        if not self._closed:
            with contextlib.suppress(OSError):
                replacement = self._spawn()
        self._idle.put(replacement)

    def parse(self, source: str | os.PathLike[str] | int) -> ParsedInstance:
        """Parse the DICOM file ``source`` in a worker: a path, or an open file descriptor.

        A descriptor (of a regular or memory file, read from its start) is passed to the
        worker, which closes its copy; the caller keeps and closes its own.

        Raises
        ------
        RejectedInstanceError
            The file is not an acceptable instance, or parsing hit a limit
            (memory, CPU, ``timeout``) or crashed the worker.
        WorkerPoolError
            The pool is closed or cannot start a worker.
        """
        worker = self._acquire()
        try:
            answer = self._ask(worker, source if isinstance(source, int) else os.fspath(source))
        except RejectedInstanceError:
            raise
        except BaseException:
            self._retire(worker)
            raise
        worker.tasks += 1
        if worker.tasks >= self.max_tasks_per_worker:
            self._retire(worker, kill=False)
        else:
            self._idle.put(worker)
        return ParsedInstance.from_dict(answer)

    def _ask(self, worker: _Worker, source: str | int) -> dict[str, Any]:
        try:
            if isinstance(source, int):
                worker.conn.send(_FD_TASK)
                send_handle(worker.conn, source, worker.process.pid)
            else:
                worker.conn.send(source)
            ready = worker.conn.poll(self.timeout)
        except (OSError, ValueError):
            ready = True  # a dead pipe reads as end of file below
        if not ready:
            self._retire(worker)
            raise RejectedInstanceError(
                RejectReason.TIMED_OUT,
                f"parsing took longer than {self.timeout:g} s; the worker was stopped",
            )
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            code = worker.join(5)
            self._retire(worker)
            raise _died(code) from None
        if message[0] == "ok":
            return dict(message[1])
        _, reason, detail, retiring = message
        if retiring:
            self._retire(worker, kill=False)
        else:
            self._idle.put(worker)
        raise RejectedInstanceError(RejectReason(reason), str(detail))

    def close(self) -> None:
        """Stop every worker (waiting for tasks in flight to finish their turn)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            workers = list(self._all)
        stopped = 0
        while stopped < self.size:
            try:
                worker = self._idle.get(timeout=self.timeout + 5)
            except queue.Empty:
                break
            stopped += 1
            if worker is not None:
                worker.stop()
        for worker in workers:  # any still running after the wait
            worker.kill()
        with self._lock:
            self._all.clear()
        for _ in range(self.size):
            self._idle.put(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _died(code: int | None) -> RejectedInstanceError:
    if code is not None and code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        if sig == signal.SIGXCPU:
            return RejectedInstanceError(
                RejectReason.RESOURCE_LIMIT, "parsing used more CPU time than allowed"
            )
        return RejectedInstanceError(
            RejectReason.WORKER_CRASHED, f"the parsing worker was ended by {name}"
        )
    return RejectedInstanceError(
        RejectReason.WORKER_CRASHED, f"the parsing worker exited (code {code})"
    )
