"""Running the pipeline on one stored instance, here or on a Dask cluster.

:func:`execute_file` is the task: it reads a plaintext DICOM file, runs
:func:`~usreview.processing.run_pipeline`, and returns the :class:`Outputs` that leave
the hub (the SR of :mod:`usreview.processing.sr` and a JSON summary) as bytes. It needs
no key, no archive and no hub: it runs in any process that has usreview installed.

Two executors run it for the queue worker (:mod:`usreview.processing.worker`):

- :class:`LocalExecutor`, a small pool of spawned processes on this machine (default);
- :class:`DaskExecutor`, the workers of a ``dask.distributed`` scheduler
  (``tcp://HOST:PORT``; use ``tls://`` with Dask's TLS settings beyond a trusted network:
  the plaintext instance travels to the Dask worker). A Dask worker lost mid-task is
  replaced by the scheduler, which runs the task again elsewhere.

A task is named ``"module:function"`` (default :data:`DEFAULT_TASK`), so that another
function with the same contract (a path in, :class:`Outputs` out) can be plugged in.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import tempfile
import uuid
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.uid import generate_uid

from usreview.dicom import read
from usreview.processing.analyze import summarize
from usreview.processing.pipeline import run_pipeline
from usreview.processing.results import ResultStatus
from usreview.processing.sr import build_sr

__all__ = [
    "DEFAULT_TASK",
    "DaskExecutor",
    "Executor",
    "Handle",
    "LocalExecutor",
    "Outputs",
    "execute_bytes",
    "execute_file",
    "run_task",
]

DEFAULT_TASK = "usreview.processing.execution:execute_file"
_FAILED = ResultStatus.FAILED
_NOTICE = (
    "Automatic measurements: decision support for the reviewing expert, not a diagnosis; "
    "not reviewed yet."
)


@dataclass(frozen=True, slots=True)
class Outputs:
    """What processing one instance produced, ready to seal and publish.

    ``sr`` and ``summary`` are ``None`` when no processor applied (nothing to send);
    ``signature`` names the processors and versions that ran (the idempotency key uses
    it); ``problem`` gives the reasons of processors that failed.
    """

    sop_instance_uid: str
    study_instance_uid: str
    signature: str
    sr: bytes | None
    summary: bytes | None
    problem: str | None = None


def execute_file(path: str) -> Outputs:
    """Run the pipeline on the DICOM file ``path``; build the SR and the JSON summary."""
    instance = read(Path(path))
    results = run_pipeline(instance)
    uid = instance.sop_instance_uid
    versions = sorted(f"{r.provenance.processor}={r.provenance.version}" for r in results)
    signature = hashlib.sha256("\n".join(versions).encode()).hexdigest()[:16]
    failed = [r.reason or r.provenance.processor for r in results if r.status == _FAILED]
    problem = "; ".join(failed) or None
    produced = any(
        r.output.quantities or r.output.findings or r.output.recommendations for r in results
    )
    if not produced and problem is None:
        return Outputs(uid, instance.study_instance_uid, signature, None, None)
    sr_uid = generate_uid(entropy_srcs=[uid, "sr", signature])
    document = build_sr(
        dcmread(path, stop_before_pixels=True),
        results,
        sop_instance_uid=sr_uid,
        series_instance_uid=generate_uid(entropy_srcs=[instance.study_instance_uid, "sr"]),
    )
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    summary = summarize(Path(f"{uid}.dcm"), [k.value for k in instance.kinds], uid, results)
    del summary["file"], summary["images"]
    summary.update(
        study_instance_uid=instance.study_instance_uid,
        sr_sop_instance_uid=sr_uid,
        signature=signature,
        notice=_NOTICE,
    )
    data = json.dumps(summary, indent=1, sort_keys=True, default=str).encode()
    return Outputs(uid, instance.study_instance_uid, signature, buffer.getvalue(), data, problem)


def execute_bytes(task: str, data: bytes) -> Outputs:
    """Write ``data`` (a DICOM file) to a private temporary file and run ``task`` on it."""
    folder = tempfile.mkdtemp(prefix="usreview-task-")  # mode 0700
    path = Path(folder) / "instance.dcm"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as f:
            f.write(data)
        return run_task(task, str(path))
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(folder)


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

    def close(self) -> None:
        """Stop; tasks in flight are abandoned (their jobs' leases expire)."""


class LocalExecutor:
    """A pool of ``processes`` spawned processes on this machine.

    A pool whose process died (killed, out of memory) is replaced at the next submit;
    the tasks it held fail and their jobs are retried.
    """

    def __init__(self, processes: int = 2, task: str = DEFAULT_TASK) -> None:
        if processes < 1:
            raise ValueError("LocalExecutor: argument 'processes' must be at least 1")
        self.slots = processes
        self.task = task
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.slots, mp_context=get_context("spawn"))

    def submit(self, path: Path) -> Future[Outputs]:
        """Run the task on ``path`` in a pool process."""
        try:
            return self._pool.submit(run_task, self.task, str(path))
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(run_task, self.task, str(path))

    def close(self) -> None:
        """Shut the pool down without waiting for tasks in flight."""
        self._pool.shutdown(wait=False, cancel_futures=True)


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

    def submit(self, path: Path) -> Handle:
        """Send the instance's bytes with the task to the cluster."""
        data = Path(path).read_bytes()
        key = f"usreview-process-{uuid.uuid4().hex}"
        future: Handle = self._client.submit(execute_bytes, self.task, data, key=key, pure=False)
        return future

    def close(self) -> None:
        """Disconnect from the scheduler (the cluster keeps running)."""
        self._client.close()  # type: ignore[no-untyped-call]
