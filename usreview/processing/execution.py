"""Running the pipeline on one stored instance, here or on a Dask cluster.

:func:`execute_file` is the task: it reads a plaintext DICOM file, runs
:func:`~usreview.processing.run_pipeline`, and returns the :class:`Outputs` that leave
the hub as bytes: the SR of :mod:`usreview.processing.sr`, a JSON summary, and each
processor's derived images as derived Ultrasound (Multi-frame) Image instances of the
source (:func:`~usreview.processing.filters.derived_from_result`: the speckle filters'
outputs, the Doppler envelope overlay), with the source's regions and the derivation
recorded. It needs no key, no archive and no hub: it runs in any process that has usreview
installed.

An instance that usreview itself derived (a filtered still or cine, a Doppler overlay: see
:func:`~usreview.processing.filters.derived.usreview_derivation`), which a site's PACS may
forward back to the hub, is not processed again (that would publish filtered-of-filtered
images): :func:`execute_file` returns :class:`Outputs` with nothing to publish, no
``problem`` (nothing failed) and the reason in ``skipped``.

Two executors run it for the queue worker (:mod:`usreview.processing.worker`):

- :class:`LocalExecutor`, a small pool of spawned processes on this machine (default);
- :class:`DaskExecutor`, the workers of a ``dask.distributed`` scheduler
  (``tcp://HOST:PORT``; use ``tls://`` with Dask's TLS settings beyond a trusted network:
  the plaintext instance travels to the Dask worker). A Dask worker lost mid-task is
  replaced by the scheduler, which runs the task again elsewhere.

A Dask worker gets the instance's bytes (:func:`execute_bytes`) and keeps them in a memory
file (:func:`os.memfd_create`), which the task reads as ``/proc/self/fd/N``: no plaintext
reaches its disk, and the kernel frees it when the task ends or its process dies, even by
``kill -9``. On a system without memory files (not Linux) the instance goes to a private
file in ``usreview-plaintext-UID`` (mode 0700) in the temporary folder (``$TMPDIR``; put
it on tmpfs or an encrypted volume); a file a killed process left there is removed by a
later task once older than twice the worker's default task timeout.

A task is named ``"module:function"`` (default :data:`DEFAULT_TASK`), so that another
function with the same contract (a path in, :class:`Outputs` out) can be plugged in.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import resource
import secrets
import signal
import stat
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.uid import generate_uid

from usreview import _json as strict_json
from usreview import _memfile
from usreview.dicom import UltrasoundInstance, read
from usreview.processing import plausible, similarity
from usreview.processing.analyze import summarize
from usreview.processing.filters.derived import derived_from_result, usreview_derivation
from usreview.processing.pipeline import run_pipeline
from usreview.processing.recommendations import study as study_rule
from usreview.processing.registry import Registry
from usreview.processing.results import ProcessorResult, ResultStatus
from usreview.processing.similarity import Descriptor, describe
from usreview.processing.sr import build_sr

__all__ = [
    "DEFAULT_TASK",
    "DaskExecutor",
    "DerivedOutput",
    "Executor",
    "Handle",
    "LocalExecutor",
    "Outputs",
    "derived_outputs",
    "execute_bytes",
    "execute_file",
    "run_task",
    "with_finding",
]

DEFAULT_TASK = "usreview.processing.execution:execute_file"
#: Age past which :func:`_fallback_folder` removes a leftover plaintext: twice the worker's
#: default task timeout (``usreview hub worker --task-timeout``), so no running task's file.
_FALLBACK_MAX_AGE = 1200.0
_FAILED = ResultStatus.FAILED
_NOTICE = (
    "Automatic measurements: decision support for the reviewing expert, not a diagnosis; "
    "not reviewed yet."
)


@dataclass(frozen=True, slots=True)
class DerivedOutput:
    """One derived image of a processor as a DICOM Part 10 file (``data``), ready to seal.

    ``sop_instance_uid`` is stable for the same source, processor, version, parameters and
    image name, so a retried job makes the same instance.
    """

    processor: str
    version: str
    name: str
    description: str
    sop_instance_uid: str
    sop_class_uid: str
    frames: int
    data: bytes

    @property
    def key(self) -> str:
        """The part of the idempotency key that tells this image apart (at most 110 chars)."""
        text = f"{self.processor}={self.version}/{self.sop_instance_uid}"
        if len(text) <= 110:
            return text
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def as_dict(self) -> dict[str, object]:
        """JSON view without the bytes."""
        return {
            "processor": self.processor,
            "version": self.version,
            "name": self.name,
            "description": self.description,
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "frames": self.frames,
        }


@dataclass(frozen=True, slots=True)
class Outputs:
    """What processing one instance produced, ready to seal and publish.

    ``sr`` and ``summary`` are ``None`` when no processor measured or found anything
    (nothing to send); ``derived`` holds the derived images (DICOM), whatever the rest;
    ``signature`` names the processors and versions that ran (the idempotency key uses
    it); ``problem`` gives the reasons of processors that failed (or whose image could not
    be made an instance); ``seconds`` how long each stage took (read, pipeline, derived,
    sr, summary). ``skipped`` says why the instance was not processed at all (it is an
    image usreview derived): then there is nothing to publish and no problem; the job is
    done, not failed. ``processors`` lists the processors that ran as ``name=version``, the
    value check (:mod:`usreview.processing.plausible`) as ``value_ranges=VERSION``, for a
    kind compared with the case library the descriptor its similar cases are chosen by
    (:mod:`usreview.processing.similarity`, ``similarity=VERSION``), and for a PW spectrum
    the study evaluation it may trigger (:mod:`usreview.processing.recommendations.study`,
    ``study_evaluation=VERSION``); empty for an instance not processed, ``None`` when the
    task does not say; the job keeps it, and ``usreview hub jobs --outdated`` finds the jobs
    an upgrade changed. ``signature`` names them all but the study evaluation, which
    changes nothing of this instance's outputs. ``kinds`` are the
    instance's image kinds and ``descriptor`` what the case library compares it by
    (:mod:`usreview.processing.similarity`; ``None`` for a kind it does not compare).
    """

    sop_instance_uid: str
    study_instance_uid: str
    signature: str
    sr: bytes | None
    summary: bytes | None
    problem: str | None = None
    derived: tuple[DerivedOutput, ...] = ()
    seconds: Mapping[str, float] = field(default_factory=dict)
    skipped: str | None = None
    processors: tuple[str, ...] | None = None
    kinds: tuple[str, ...] = ()
    descriptor: Descriptor | None = None


class _Stopwatch:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = self.laps.get(stage, 0.0) + now - self._last
        self._last = now


def execute_file(path: str, registry: Registry | None = None) -> Outputs:
    """Run the pipeline on the DICOM file ``path``; build the SR, JSON summary, derived images.

    ``registry`` replaces the default processors (a task may run other versions).
    """
    clock = _Stopwatch()
    instance = read(Path(path))
    clock.lap("read")
    derivation = usreview_derivation(instance.dataset)
    if derivation is not None:
        uid, study = instance.sop_instance_uid, instance.study_instance_uid
        signature = hashlib.sha256(b"usreview-derived: not processed").hexdigest()[:16]
        skipped = f"not processed: {derivation}"
        return Outputs(
            uid, study, signature, None, None, skipped=skipped, seconds=clock.laps, processors=()
        )
    results = run_pipeline(instance, registry=registry)
    clock.lap("pipeline")
    kinds = tuple(k.value for k in instance.kinds)
    try:
        descriptor = describe(instance)
    except Exception:  # whatever it meets, the results go without it
        descriptor = None
    clock.lap("descriptor")
    uid = instance.sop_instance_uid
    versions = sorted(
        [f"{r.provenance.processor}={r.provenance.version}" for r in results]
        + [f"{plausible.NAME}={plausible.VERSION}"]  # Processor.run checked every value
        # The descriptor the worker chooses the similar cases of the summary by.
        + ([f"{similarity.NAME}={similarity.VERSION}"] if similarity.compares(kinds) else [])
    )
    signature = hashlib.sha256("\n".join(versions).encode()).hexdigest()[:16]
    # The study evaluation these results may trigger (the worker's, after publishing):
    # recorded with the job, not in the signature, since this instance's outputs do not
    # depend on it.
    evaluation = [f"{study_rule.NAME}={study_rule.VERSION}"] if _evaluated(instance) else []
    ran = tuple(sorted(versions + evaluation))
    failed = [r.reason or r.provenance.processor for r in results if r.status == _FAILED]
    derived, refused = derived_outputs(instance, results)
    clock.lap("derived")
    problem = "; ".join(failed + refused) or None
    produced = any(
        r.output.quantities or r.output.findings or r.output.recommendations for r in results
    )
    study = instance.study_instance_uid
    if not produced and problem is None:
        return Outputs(
            uid,
            study,
            signature,
            None,
            None,
            None,
            derived,
            clock.laps,
            processors=ran,
            kinds=kinds,
            descriptor=descriptor,
        )
    sr_uid = generate_uid(entropy_srcs=[uid, "sr", signature])
    document = build_sr(
        dcmread(path, stop_before_pixels=True),
        results,
        sop_instance_uid=sr_uid,
        series_instance_uid=generate_uid(entropy_srcs=[study, "sr"]),
    )
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    clock.lap("sr")
    summary = _summary(uid, study, kinds, results, derived, signature, sr_uid)
    data = strict_json.dumps(summary, indent=1, sort_keys=True, default=str).encode()
    clock.lap("summary")
    return Outputs(
        uid,
        study,
        signature,
        buffer.getvalue(),
        data,
        problem,
        derived,
        clock.laps,
        processors=ran,
        kinds=kinds,
        descriptor=descriptor,
    )


def _evaluated(instance: UltrasoundInstance) -> bool:
    """Whether ``instance`` is of a kind whose results the study rules read."""
    return any(kind in instance.kinds for kind in study_rule.KINDS)


def _summary(
    uid: str,
    study: str,
    kinds: Sequence[str],
    results: Sequence[ProcessorResult],
    derived: Sequence[DerivedOutput],
    signature: str,
    sr_uid: str | None,
) -> dict[str, Any]:
    """The JSON summary sent to the site (and kept for reviewers)."""
    summary = summarize(Path(f"{uid}.dcm"), kinds, uid, list(results))
    del summary["file"], summary["images"]
    summary.update(
        study_instance_uid=study,
        sr_sop_instance_uid=sr_uid,
        derived_images=[d.as_dict() for d in derived],
        signature=signature,
        notice=_NOTICE,
    )
    return summary


def with_finding(outputs: Outputs, finding: Mapping[str, Any]) -> Outputs:
    """``outputs`` whose JSON summary also holds ``finding``; a summary without an SR is
    made for it if the instance had none."""
    if outputs.summary is None:
        uid, study = outputs.sop_instance_uid, outputs.study_instance_uid
        document = _summary(uid, study, outputs.kinds, (), outputs.derived, outputs.signature, None)
    else:
        document = json.loads(outputs.summary)
    document["findings"] = [*document["findings"], dict(finding)]
    data = strict_json.dumps(document, indent=1, sort_keys=True, default=str).encode()
    return replace(outputs, summary=data)


def derived_outputs(
    instance: UltrasoundInstance, results: Sequence[ProcessorResult]
) -> tuple[tuple[DerivedOutput, ...], list[str]]:
    """Every image of the successful ``results`` as a derived instance of ``instance``.

    Returns the instances and, for images that cannot be one (wrong size, say), the reasons;
    the other images still go.
    """
    made: list[DerivedOutput] = []
    refused: list[str] = []
    for result in results:
        if not result.ok:
            continue
        provenance = result.provenance
        for image in result.output.images:
            try:
                ds = derived_from_result(instance, result, image)
                buffer = io.BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
            except (ValueError, TypeError) as exc:
                refused.append(
                    f"making image {image.name} of processor {provenance.processor} a DICOM "
                    f"instance of {instance.sop_instance_uid}: {exc}"
                )
                continue
            made.append(
                DerivedOutput(
                    processor=provenance.processor,
                    version=provenance.version,
                    name=image.name,
                    description=image.description,
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    frames=image.number_of_frames,
                    data=buffer.getvalue(),
                )
            )
    return tuple(made), refused


def execute_bytes(task: str, data: bytes) -> Outputs:
    """Run ``task`` on ``data`` (a DICOM file) held in a memory file, read by its
    ``/proc/self/fd/N`` name: the plaintext never reaches a disk and the kernel frees it
    when the call ends or the process dies, even by ``kill -9`` (a Dask worker stopped for
    the task timeout). Without memory files (not Linux) it is written to a private file
    in ``$TMPDIR/usreview-plaintext-UID`` (see the module docstring), removed when the
    call ends."""
    with _plaintext(data) as path:
        return run_task(task, path)


@contextlib.contextmanager
def _plaintext(data: bytes) -> Iterator[str]:
    """A name to read ``data`` by during the block: a memory file's, else a private file's."""
    if _memfile.AVAILABLE:
        with _memfile.memory_file() as memory:
            memory.write(data)
            memory.flush()
            yield _memfile.fd_path(memory.fileno())
        return
    path = _fallback_folder() / f"{secrets.token_hex(16)}.dcm"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        yield str(path)
    finally:
        path.unlink(missing_ok=True)


def _fallback_folder() -> Path:
    """The private folder (mode 0700) of :func:`execute_bytes` on a system without memory
    files: ``usreview-plaintext-UID`` in the temporary folder (:func:`tempfile.gettempdir`,
    ``$TMPDIR``; put it on tmpfs or an encrypted volume). Files left there by a killed
    process and older than :data:`_FALLBACK_MAX_AGE` are removed first.

    Raises
    ------
    PermissionError
        The name exists and is not a folder of this user: remove it.
    """
    base = Path(tempfile.gettempdir()) / f"usreview-plaintext-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{base} is not a folder of this user; remove it")
    if info.st_mode & 0o077:
        os.chmod(base, 0o700)
    stale = time.time() - _FALLBACK_MAX_AGE
    for entry in base.glob("*.dcm"):
        with contextlib.suppress(FileNotFoundError):
            if entry.lstat().st_mtime < stale:
                entry.unlink()
    return base


def run_task(task: str, path: str) -> Outputs:
    """Import the function named ``"module:function"`` and call it on ``path``."""
    module, _, name = task.partition(":")
    function = getattr(importlib.import_module(module), name)
    outputs = function(path)
    if not isinstance(outputs, Outputs):
        raise TypeError(f"task {task} returned {type(outputs).__name__}, not Outputs")
    return outputs


class Handle(Protocol):
    """A submitted task: :class:`concurrent.futures.Future` and Dask's futures both fit."""

    def done(self) -> bool:
        """Whether it finished (with a result or an exception)."""

    def result(self, timeout: float | None = None) -> Any:
        """Its :class:`Outputs`, or raise its exception."""

    def cancel(self) -> Any:
        """Try to cancel it."""


class Executor(Protocol):
    """Runs tasks: a local process pool or a Dask cluster."""

    slots: int
    """How many tasks the worker keeps in flight."""

    def submit(self, path: Path) -> Handle:
        """Run the task on the plaintext file ``path`` (read before this returns if remote)."""

    def reset(self) -> None:
        """Stop every task in flight (one ran past its deadline); new ones can be submitted."""

    def close(self) -> None:
        """Stop; tasks in flight are abandoned (their jobs' leases expire)."""


def _ready() -> None:
    """Nothing: submitted once per slot so that a new pool starts its processes now."""


#: Address space of each local pool process (``RLIMIT_AS``): an instance that needs more
#: fails alone with ``MemoryError`` instead of starving the hub's other processes (the
#: largest instance the hub takes, a 2 GiB volume, needs several times its size).
DEFAULT_PROCESS_MEMORY = 8 * 1024**3


def _pool_process(memory: int | None) -> None:
    """Set up a pool process: it ignores SIGINT (Ctrl-C reaches the whole process group,
    and the worker that owns the pool stops it; a traceback per pool process otherwise)
    and may use at most ``memory`` bytes of address space. It started with SIGINT blocked
    (:meth:`LocalExecutor._new_pool`), so a Ctrl-C while it was importing is dropped too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if memory is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


class LocalExecutor:
    """A pool of ``processes`` spawned processes on this machine.

    The processes start with the pool, not at the first job: each spends a second or two
    of CPU importing numpy, scipy, pydicom and the processors, which would otherwise
    delay the first instance's results after a (re)start and land on the first exam's
    uploads. A pool whose process died (killed, out of memory) is replaced at the next
    submit; the tasks it held fail and their jobs are retried.
    """

    def __init__(
        self,
        processes: int = 2,
        task: str = DEFAULT_TASK,
        *,
        memory: int | None = DEFAULT_PROCESS_MEMORY,
    ) -> None:
        if processes < 1:
            raise ValueError("LocalExecutor: argument 'processes' must be at least 1")
        self.slots = processes
        self.task = task
        self.memory = memory
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            self.slots,
            mp_context=get_context("spawn"),
            initializer=_pool_process,
            initargs=(self.memory,),
        )
        # A process per submit while none is idle, spawned by this thread: with SIGINT
        # blocked here, each starts with it blocked (the mask survives fork and exec) until
        # _pool_process ignores it, instead of dying with a traceback on a Ctrl-C that
        # comes while it imports (a second or two).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for _ in range(self.slots):
                pool.submit(_ready)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return pool

    def submit(self, path: Path) -> Future[Outputs]:
        """Run the task on ``path`` in a pool process."""
        try:
            return self._pool.submit(run_task, self.task, str(path))
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(run_task, self.task, str(path))

    def reset(self) -> None:
        """Terminate the pool's processes (whatever they run) and start a new pool."""
        _terminate(self._pool)
        self._pool = self._new_pool()

    def close(self) -> None:
        """Terminate the pool's processes without waiting for tasks in flight (a worker
        released their jobs first: another runs them). Shutting the pool down alone would
        leave the interpreter's exit waiting for them: a hub stopping its worker waited
        as long as the longest filter in flight."""
        _terminate(self._pool)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Terminate ``pool``'s processes (whatever they run) and shut it down."""
    processes = list(getattr(pool, "_processes", {}).values())  # no public way to stop one
    for process in processes:
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(10)


class DaskExecutor:
    """The workers of the ``dask.distributed`` scheduler at ``address``.

    ``slots`` defaults to the cluster's total threads when connected (at least 1).
    """

    def __init__(
        self,
        address: str,
        task: str = DEFAULT_TASK,
        *,
        slots: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        from distributed import Client

        self.task = task
        self._client = Client(address, timeout=timeout, set_as_default=False)  # type: ignore[no-untyped-call]
        threads = sum(self._client.nthreads().values())  # type: ignore[no-untyped-call]
        self.slots = slots if slots is not None else max(1, threads)
        self._submitted: weakref.WeakSet[Handle] = weakref.WeakSet()

    def submit(self, path: Path) -> Handle:
        """Send the instance's bytes with the task to the cluster."""
        data = Path(path).read_bytes()
        key = f"usreview-process-{uuid.uuid4().hex}"
        future: Handle = self._client.submit(execute_bytes, self.task, data, key=key, pure=False)
        self._submitted.add(future)
        return future

    def reset(self) -> None:
        """Cancel the tasks this executor has in flight on the cluster."""
        pending = [f for f in self._submitted if not f.done()]
        self._submitted.clear()
        if pending:
            self._client.cancel(pending)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Disconnect from the scheduler (the cluster keeps running)."""
        self._client.close()  # type: ignore[no-untyped-call]
