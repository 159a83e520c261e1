"""The queue worker: claims processing jobs, runs them, publishes results to the site.

For each job (:mod:`usreview.store.jobs`), in order:

1. claim it with a lease, renewed while it runs;
2. audit the read (``read`` of ``instances/{uid}`` with the job's id: every instance the
   worker opens, the study rules' too), then open the stored envelope with the hub's key
   into a private file under ``STATE/processing/`` (checked against the plaintext hash
   stored with it);
3. run :func:`~usreview.processing.execution.execute_file` on an executor: a local
   process pool (default) or a Dask cluster (``--scheduler``); then compare the instance
   with the case library (:class:`~usreview.processing.case_library.CaseLibrary`): its most
   similar teaching cases become the summary's ``similar_cases`` finding;
4. seal the SR, the JSON summary and each derived image (a derived Ultrasound Image
   instance: filtered image or cine, Doppler envelope overlay) to the originating site with
   :func:`usreview.hub.api.publish_result`, each under an idempotency key made of the
   instance, the output and the versions of the processors that made it (kinds ``sr``,
   ``summary`` and ``derived-image``; the site's gateway puts each in its outbox and sends
   the DICOM ones to its PACS); an instance processed again supersedes its older results
   (:mod:`usreview.processing.supersede`); an instance whose Doppler spectrum names its
   vessel has the study rules applied to its study's analyses, which may publish the
   study's own SR and JSON summary (:mod:`usreview.processing.study_results`);
5. complete the job (the study becomes processed when all of its jobs are done).

A failure at any step fails the attempt (retried with backoff; after the last, the job
and its study are failed with the reason). A worker killed anywhere loses nothing: its
lease expires, another worker (or the same one restarted) takes the job, and the
results already published are found by their keys instead of being published again.

Run it as ``python -m usreview.processing.worker --state DIR`` (the hub runs it as its
managed service ``usreview-worker``) or ``usreview hub worker``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from asyncio import CancelledError
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from pydicom import dcmread
from pydicom.dataset import Dataset

from usreview._locks import lock_held
from usreview.errors import InputError, UsreviewError
from usreview.hub.api.plaintext import open_stored
from usreview.hub.api.publish import publish_result
from usreview.hub.api.settings import ServiceSettings, open_archive
from usreview.hub.api.sitekeys import SiteKeyFiles
from usreview.hub.api.teaching_cases import open_teaching_store
from usreview.hub.audit import AuditAction, AuditLog
from usreview.hub.hubkeys import LiveHubKeys
from usreview.hub.state import HubState, existing_state, state_from_env
from usreview.processing.case_library import CaseLibrary
from usreview.processing.execution import (
    DEFAULT_TASK,
    DaskExecutor,
    Executor,
    Handle,
    LocalExecutor,
    Outputs,
    with_finding,
)
from usreview.processing.similarity import similar_cases_finding
from usreview.processing.study_results import labelled, plan_study_results
from usreview.processing.supersede import Planned, plan_publication
from usreview.store import Archive, CorruptObjectError, Reviewer, StorageError
from usreview.store.jobs import JobQueue, JobRecord, Lease, LeaseLostError, RetryPolicy

__all__ = ["ACTOR", "DERIVED_KIND", "Worker", "check_scheduler", "check_task", "main"]

#: Who the worker is in the audit log and the study history.
ACTOR = "processing"
#: The results feed's kind of a derived image (a DICOM instance).
DERIVED_KIND = "derived-image"
#: The longest one instance's processing may take, by default (a 200-frame 600x800 cine
#: takes a few seconds on one core).
DEFAULT_TASK_SECONDS = 600.0
_log = logging.getLogger(__name__)


@dataclass
class _Running:
    lease: Lease
    handle: Handle
    plaintext: Path
    renewed: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)


class Worker:
    """Takes jobs from the archive's queue and runs them on ``executor``.

    Parameters
    ----------
    state
        The hub's state directory (its key, the sites' keys, the audit log).
    archive
        The archive whose jobs and results feed it works on.
    executor
        Where the pipeline runs; :attr:`Executor.slots` jobs are kept in flight.
    lease_seconds
        How long a claim lasts without renewal (renewed every third of it).
    poll_seconds
        How long to sleep when no job is ready.
    policy
        Retries and backoff of failing jobs.
    task_seconds
        The longest one instance's processing may take: past it the job fails at once
        (without retries: the instance would take as long again) and the executor's tasks
        in flight are stopped, the others' jobs given back untried.
    """

    def __init__(
        self,
        state: HubState,
        archive: Archive,
        executor: Executor,
        *,
        lease_seconds: float = 60.0,
        poll_seconds: float = 1.0,
        policy: RetryPolicy | None = None,
        task_seconds: float = DEFAULT_TASK_SECONDS,
    ) -> None:
        self.state = state
        self.task_seconds = task_seconds
        self.archive = archive
        self.executor = executor
        self.queue = JobQueue(archive, policy)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._hub_keys = LiveHubKeys(state)  # read again after a rotation
        self._site_keys = SiteKeyFiles(state.sites)
        self._audit = AuditLog(state.audit_log, state.audit_key.read_bytes())
        self._scratch = _Scratch(state.root / "processing")
        self._running: list[_Running] = []
        self.library = CaseLibrary(
            open_teaching_store(archive, state.at_rest_key),
            self._scratch.folder,
            self._audit,
            ACTOR,
        )

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event, *, until_idle: bool = False) -> None:
        """Work until ``stop`` is set (or, with ``until_idle``, until no job is left)."""
        try:
            while not stop.is_set():
                try:
                    busy = self.step()
                except StorageError as exc:  # the database or disk is away: wait, try again
                    _log.error("worker step failed: %s", exc)
                    stop.wait(self.poll_seconds)
                    continue
                if until_idle and not busy and not self._running:
                    return
                stop.wait(0.02 if self._running or busy else self.poll_seconds)
        finally:
            self.release_all()

    def step(self) -> bool:
        """Claim what fits, renew leases, finish what is done; whether anything happened."""
        claimed = self._fill()
        self._renew()
        finished = self._collect()
        expired = self._expire()
        return claimed or finished or expired

    def release_all(self) -> None:
        """Give back the jobs in flight (stopping): they are taken again, untried."""
        for running in self._running:
            running.handle.cancel()
            with contextlib.suppress(UsreviewError):
                self.queue.release(running.lease)
            running.plaintext.unlink(missing_ok=True)
        self._running.clear()

    def close(self) -> None:
        """Release jobs in flight, stop the executor, remove the private folder."""
        self.release_all()
        self.executor.close()
        self._scratch.close()

    # -- steps -------------------------------------------------------------------------

    def _open(self, job: JobRecord, sop_instance_uid: str, out: Path) -> None:
        """Open the stored instance into the new file ``out`` (:func:`open_stored`) for
        ``job``, audited first (``read`` of ``instances/{uid}``).

        Raises :class:`~usreview.hub.errors.AuditError` (nothing opened) if the audit log
        cannot be written: the attempt fails, as when a ``published`` line cannot be.
        """
        reviewer = Reviewer(ACTOR)
        record = self.archive.get(reviewer, sop_instance_uid)
        self._audit.record(
            ACTOR,
            AuditAction.READ,
            f"instances/{sop_instance_uid}",
            detail={"job": job.id, "site": record.site, "study": record.study_instance_uid},
        )
        open_stored(
            self.archive,
            reviewer,
            record,
            out,
            hub_keys=self._hub_keys.get().opening,
            site_keys=self._site_keys,
        )

    def _fill(self) -> bool:
        claimed = False
        while len(self._running) < self.executor.slots:
            lease = self.queue.claim(self.owner, self.lease_seconds)
            if lease is None:
                break
            claimed = True
            path = self._scratch.path(lease.job.id)
            try:
                self._open(lease.job, lease.job.sop_instance_uid, path)
                handle = self.executor.submit(path)
            except Exception as exc:
                path.unlink(missing_ok=True)
                self._fail(lease, "opening the stored instance", exc)
                continue
            self._running.append(_Running(lease, handle, path))
        return claimed

    def _renew(self) -> None:
        now = time.monotonic()
        for running in list(self._running):
            if now - running.renewed < self.lease_seconds / 3:
                continue
            try:
                running.lease = self.queue.renew(running.lease, self.lease_seconds)
                running.renewed = now
            except LeaseLostError:
                _log.warning("lost the lease of job %s; dropping it", running.lease.job.id)
                self._drop(running)
            except UsreviewError as exc:  # the database is away: try again next round
                _log.warning("renewing job %s: %s", running.lease.job.id, exc)

    def _collect(self) -> bool:
        finished = False
        for running in [r for r in self._running if r.handle.done()]:
            finished = True
            self._drop(running)
            lease = running.lease
            try:
                outputs = cast(Outputs, running.handle.result())
            except (Exception, CancelledError) as exc:  # Dask cancels with asyncio's
                self._fail(lease, "running the pipeline", exc)
                continue
            try:
                self.publish(lease, outputs)
            except Exception as exc:
                self._fail(lease, "publishing the results", exc)
                continue
            try:
                self.queue.complete(lease, problem=outputs.problem, processors=outputs.processors)
            except LeaseLostError:
                _log.warning("job %s finished elsewhere; not completing it", lease.job.id)
        return finished

    def publish(self, lease: Lease, outputs: Outputs) -> None:
        """Seal ``outputs`` of the job held by ``lease`` to its site and publish them.

        Each goes under its idempotency key, so publishing again (a retried job) publishes
        nothing twice. The JSON summary is also kept in the archive for reviewers (sealed
        results cannot be read back at the hub), once per instance and signature.
        Raises :class:`CorruptObjectError` for outputs of another instance.
        """
        job = lease.job
        if outputs.sop_instance_uid != job.sop_instance_uid:
            raise CorruptObjectError(
                f"the stored instance is {outputs.sop_instance_uid}, not {job.sop_instance_uid}"
            )
        source_uid = job.sop_instance_uid
        plan = plan_publication(self.archive.results, self._with_similar_cases(outputs))
        if plan.summary is not None:
            self.archive.review.record_analysis(source_uid, plan.analysis_signature, plan.summary)
        self._publish(job, plan.items)
        if labelled(plan.summary):
            self.publish_study(job)

    def _with_similar_cases(self, outputs: Outputs) -> Outputs:
        """``outputs`` with the library's most similar cases as a finding, if there are any."""
        if outputs.descriptor is None:
            return outputs
        try:
            matches = self.library.similar(outputs.descriptor, outputs.study_instance_uid)
        except UsreviewError as exc:  # the results go without it
            _log.warning("comparing %s with the case library: %s", outputs.sop_instance_uid, exc)
            return outputs
        if not matches:
            return outputs
        return with_finding(outputs, similar_cases_finding(matches))

    def publish_study(self, job: JobRecord) -> None:
        """Apply the study rules to the study of ``job``; publish their results if any.

        See :mod:`usreview.processing.study_results`; the instances' headers are read from
        their stored envelopes (opened into the private folder, removed at once).
        """
        states = self.archive.review.instance_states(Reviewer(ACTOR), job.study_instance_uid)
        summaries = {uid: s.analysis for uid, s in states.items() if s.analysis is not None}

        def header(uid: str) -> Dataset:
            path = self._scratch.folder / f"job-{job.id}-header.dcm"
            try:
                self._open(job, uid, path)
                return dcmread(path, stop_before_pixels=True)
            finally:
                path.unlink(missing_ok=True)

        plan = plan_study_results(self.archive.results, job.study_instance_uid, summaries, header)
        if plan is not None:
            self._publish(job, plan.items, study=True)

    def _publish(self, job: JobRecord, items: Sequence[Planned], *, study: bool = False) -> None:
        for number, item in enumerate(items):
            name = f"{job.id}.{'study.' if study else ''}{number}.{item.kind}"
            payload = self._scratch.write(name, item.data)
            try:
                publish_result(
                    self.state,
                    self.archive,
                    job.study_instance_uid,
                    payload,
                    sites=[job.site],
                    kind=item.kind,
                    label=_label(item, study=study),
                    supersedes=item.supersedes,
                    actor=ACTOR,
                    audit=self._audit,
                    key=item.key,
                )
            finally:
                payload.unlink(missing_ok=True)

    def _expire(self) -> bool:
        """Fail the jobs past :attr:`task_seconds`; stop the executor's tasks in flight."""
        now = time.monotonic()
        late = [r for r in self._running if now - r.started > self.task_seconds]
        if not late:
            return False
        for running in late:
            self._drop(running)
            reason = TimeoutError(f"took more than {self.task_seconds:g} s; not tried again")
            self._fail(running.lease, "running the pipeline", reason, final=True)
        for running in list(self._running):  # stopped with the others: given back, untried
            self._drop(running)
            with contextlib.suppress(UsreviewError):
                self.queue.release(running.lease)
        self.executor.reset()
        return True

    def _fail(self, lease: Lease, step: str, exc: BaseException, *, final: bool = False) -> None:
        text = str(exc).strip().splitlines()
        reason = f"{step}: {type(exc).__name__}: {text[0]}" if text else f"{step}: {exc!r}"
        _log.warning("job %s (%s): %s", lease.job.id, lease.job.sop_instance_uid, reason)
        with contextlib.suppress(LeaseLostError):
            self.queue.fail(lease, reason, final=final)

    def _drop(self, running: _Running) -> None:
        if running in self._running:
            self._running.remove(running)
        running.plaintext.unlink(missing_ok=True)


def _label(item: Planned, *, study: bool = False) -> str:
    image = item.derived
    if image is not None:
        what = f"{image.description} ({image.processor} {image.version})"
    elif study:
        what = f"Automatic study evaluation ({'SR' if item.kind == 'sr' else 'JSON'})"
    else:
        what = (
            "Automatic measurements (SR)" if item.kind == "sr" else "Automatic measurements (JSON)"
        )
    return what + (
        ", not reviewed"
        if item.supersedes is None
        else ", not reviewed; replaces an earlier version"
    )


class _Scratch:
    """A private folder per worker under ``base``; folders of dead workers are removed.

    Each worker holds an exclusive lock on its folder's ``lock`` file; a folder whose
    lock can be taken belongs to a worker that is gone.
    """

    def __init__(self, base: Path) -> None:
        base.mkdir(mode=0o700, exist_ok=True)
        os.chmod(base, 0o700)
        for folder in base.iterdir():
            if folder.is_dir() and not lock_held(folder / "lock"):
                shutil.rmtree(folder, ignore_errors=True)
        self.folder = base / f"w-{os.getpid()}-{secrets.token_hex(4)}"
        self.folder.mkdir(mode=0o700)
        self._fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def path(self, job_id: int) -> Path:
        return self.folder / f"job-{job_id}.dcm"

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            f.write(data)
        return path

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        os.close(self._fd)


# -- the process -------------------------------------------------------------------------


def run_worker(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Open the state and the archive and work until SIGINT/SIGTERM (or ``stop``).

    ``args`` holds the options of ``usreview hub worker``: ``state``, ``scheduler``,
    ``processes``, ``lease``, ``poll``, ``attempts`` and ``task``. They are checked
    before anything starts (:func:`check_task`, :func:`check_scheduler`).

    Raises
    ------
    InputError
        An option that cannot work (exit status 2).
    """
    seconds = (args.lease, args.poll, args.task_timeout)
    if min(args.processes, args.attempts) < 1 or not all(0 < s < math.inf for s in seconds):
        raise InputError(
            "--processes and --attempts must be at least 1; --lease, --poll and --task-timeout > 0"
        )
    task = args.task or DEFAULT_TASK
    check_task(task)
    if args.scheduler:
        check_scheduler(args.scheduler)
    state = existing_state(args.state if args.state is not None else state_from_env())
    settings = ServiceSettings.from_state(state.root)
    stop = stop or _stop_on_signals()
    executor: Executor = (
        DaskExecutor(args.scheduler, task)
        if args.scheduler
        else LocalExecutor(args.processes, task)
    )
    archive = open_archive(state.root, settings)
    worker: Worker | None = None
    try:
        worker = Worker(
            state,
            archive,
            executor,
            lease_seconds=args.lease,
            poll_seconds=args.poll,
            policy=RetryPolicy(max_attempts=args.attempts),
            task_seconds=args.task_timeout,
        )
        where = args.scheduler or f"{args.processes} local process(es)"
        print(f"usreview worker {worker.owner}: running jobs on {where}", file=sys.stderr)
        worker.run(stop)
    finally:
        if worker is not None:
            worker.close()
        else:
            executor.close()
        archive.close()
    return 0


def check_task(task: str) -> None:
    """Refuse a task (``--task MODULE:FUNCTION``) that does not import here.

    At the start, not job by job: a mistyped task would otherwise fail every job and,
    after its attempts, its study.

    Raises
    ------
    InputError
        ``task`` is not ``MODULE:FUNCTION``, its module does not import, or it has no
        such function.
    """
    module_name, _, name = task.partition(":")
    if not module_name or not name.isidentifier():
        raise InputError(f"--task {task!r}: give MODULE:FUNCTION (default {DEFAULT_TASK})")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # whatever importing it raises: the task cannot run
        raise InputError(f"--task {task!r}: {module_name} does not import ({exc})") from None
    if not callable(getattr(module, name, None)):
        raise InputError(f"--task {task!r}: {module_name} has no function {name}")


def check_scheduler(address: str) -> None:
    """Refuse a ``--scheduler`` address Dask could not connect to whatever listens there.

    Raises
    ------
    InputError
        ``address`` is not ``SCHEME://HOST:PORT`` with a scheme Dask knows and a port
        from 1 to 65535.
    """
    from distributed.comm.addressing import get_address_host_port

    from usreview.hub.config import port_number
    from usreview.hub.errors import HubConfigError

    usage = "give tcp://HOST:PORT (tls://HOST:PORT beyond a trusted network)"
    try:
        host, port = get_address_host_port(address)
        if not host:
            raise ValueError("no host")
        port_number(port)
    except (ValueError, HubConfigError) as exc:
        raise InputError(f"--scheduler {address!r}: {exc}; {usage}") from None


def _stop_on_signals() -> threading.Event:
    # The hub stops services with SIGINT; started from a non-interactive shell, SIGINT is
    # inherited as ignored, so install handlers for both.
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)
    return stop


#: How much lower than the hub's own processes processing runs (``nice``).
NICENESS = 10


def lower_priority(niceness: int = NICENESS) -> None:
    """Make this process (and the pool it starts) yield the CPU to ingest and review.

    Processing is background work: acknowledging sites' uploads and answering reviewers
    come first. ``nice`` alone is not enough on Linux with autogroup scheduling (the
    default of desktop and many server kernels): the hub starts each service in its own
    session, and the scheduler shares the CPU fairly between sessions whatever their
    processes' nice values (with 60 sites uploading, the pool took 29% of two cores).
    When this process leads its own session (as under the hub), its session's autogroup
    is lowered too; started from a shell, only the process is.
    """
    os.nice(niceness)
    if os.getsid(0) != os.getpid():
        return  # our session is the user's shell: leave its weight alone
    # Without autogroup support (no such file) nice is what applies.
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as autogroup:
        autogroup.write(str(niceness))


def main(argv: Sequence[str] | None = None) -> int:
    """``usreview hub worker ARGS``: work until SIGINT/SIGTERM; 1 with a sentence on failure."""
    from usreview.cli import main as cli_main
    from usreview.hub.supervisor import die_with_hub

    die_with_hub()
    lower_priority()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return cli_main(["hub", "worker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    from usreview._process import run_then_exit

    run_then_exit(main)  # without the interpreter's teardown: the hub waits for it
