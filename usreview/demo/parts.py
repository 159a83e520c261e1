"""The pieces of the demo, which the benchmarks and tests drive too.

Child processes and their ports (:class:`Child`, :func:`free_port`, :func:`wait_for_port`),
the hub (:class:`HubProcess`), a site's enrollment and gateway (:func:`enroll_site`,
:func:`start_gateway`), a scanner's C-STORE (:func:`c_store`), what the hub holds and what it
measured (:func:`held_at_hub`, :func:`measure_stored`, :func:`publish_measurements`), and a
site's outbox (:func:`in_outbox`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usreview.errors import UsreviewError
from usreview.hub.state import HubState, open_state

DEFAULT_HUB_PORT = 8000
SCANNER_AE = "DEMOSCANNER"
REVIEWER = "reviewer"
RESULT_KIND = "summary"  # the JSON summary the hub's worker publishes beside the SR
USREVIEW = [sys.executable, "-m", "usreview.cli"]
_API = "/services/usreview/api/v1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^\[[CE] |error:|Error\b|exited with status")


class DemoError(UsreviewError):
    """A step of the demo failed (the message names the step and where to look)."""


@dataclass(frozen=True)
class DemoSite:
    """A simulated clinic and the kinds of study its scanner sends."""

    name: str
    kinds: tuple[str, ...]


SITES = (
    DemoSite("clinic-a", ("bmode", "pw", "cine")),
    DemoSite("clinic-b", ("mmode", "cw")),
    DemoSite("clinic-c", ("color", "volume")),
)


# -- child processes ----------------------------------------------------------------------


#: Ports :func:`free_port` handed out in this process (when not given its own set).
_HANDED: set[int] = set()


def free_port(*, besides: set[int] | None = None) -> int:
    """A TCP port free on 127.0.0.1 now, and not in ``besides`` (then added to it).

    The kernel may hand the same port to two calls once the first socket is closed:
    ports picked for several listeners that start later must be kept apart. Without
    ``besides``, the ports this process handed out before are avoided.
    """
    taken = _HANDED if besides is None else besides
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Child:
    """A child process in its own session, its output in ``log``; :meth:`stop` ends it.

    In its own session, a terminal's Ctrl-C reaches only the parent, which stops the
    children in order (gateways before the hub).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                list(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def last_line(self) -> str:
        """The last error line of the log, else its last line (for one-line errors)."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        lines = [_ANSI.sub("", line).strip() for line in lines]
        lines = [line for line in lines if len(line) > 2]
        errors = [line for line in lines if _ERROR_LINE.search(line)]
        return (errors or lines or ["no output"])[-1][-300:]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; then what is left of its group.

        The group is the child's own session, so it holds only what the child started
        (a hub's proxy, for instance, when the hub itself failed).
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)


def wait_for_port(port: int, child: Child, timeout: float = 60.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise DemoError(f"{child.name} stopped: {child.last_line()} (log: {child.log})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise DemoError(
                    f"{child.name} does not listen on port {port} after {timeout:.0f} s "
                    f"(log: {child.log})"
                ) from None
            time.sleep(0.1)


@dataclass
class HubProcess:
    """``usreview hub`` on 127.0.0.1 with TLS, run as a child process."""

    state: HubState
    port: int
    child: Child
    site_port: int | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def site_url(self) -> str:
        """Where sites send: the sites' port when the hub has one, else :attr:`url`."""
        return self.url if self.site_port is None else f"https://127.0.0.1:{self.site_port}"

    @classmethod
    def start(
        cls,
        state_dir: Path,
        port: int,
        log: Path,
        *,
        settings: dict[str, Any] | None = None,
        timeout: float = 90.0,
        on_spawn: Callable[[Child], None] | None = None,
        site_port: int | None = None,
    ) -> HubProcess:
        """Start the hub and wait until its proxy routes to the usreview service.

        ``settings`` are written to ``STATE/service_config.json`` (``ServiceSettings``)
        before the start; ``on_spawn(child)`` is called as soon as the process exists;
        ``site_port`` gives the hub a sites' port (``--site-port``).

        Raises
        ------
        DemoError
            The proxy is missing, the hub stopped, or it did not come up in ``timeout``.
        """
        from usreview.hub.errors import HubError
        from usreview.hub.proxy import find_proxy

        try:
            find_proxy()
        except HubError as exc:
            raise DemoError(str(exc)) from None
        state = open_state(state_dir)
        _refuse_running_hub(state)
        if settings is not None:
            (state.root / "service_config.json").write_text(
                json.dumps({"ServiceSettings": settings})
            )
        command = [*USREVIEW, "hub", "--state", str(state.root), "--ip", "127.0.0.1"]
        command += ["--port", str(port)]
        if site_port is not None:
            command += ["--site-port", str(site_port)]
        child = Child("the hub", command, log, cwd=state.root)
        hub = cls(state, port, child, site_port)
        try:
            if on_spawn is not None:
                on_spawn(child)
            hub.wait_ready(timeout)
        except BaseException:
            child.stop()
            raise
        return hub

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.child.alive():
                raise DemoError(
                    f"the hub stopped: {self.child.last_line()} (log: {self.child.log})"
                )
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the hub did not serve within {timeout:.0f} s (log: {self.child.log})"
                )
            if self.state.tls_cert.exists():
                try:
                    context = ssl.create_default_context(cafile=str(self.state.tls_cert))
                    request = urllib.request.Request(self.url + _API + "/whoami")
                    urllib.request.urlopen(request, context=context, timeout=5).close()
                except urllib.error.HTTPError as exc:
                    if exc.code == 401:  # the proxy routes to the service, which answers
                        return
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.2)

    def wait_processed(self, timeout: float, on_poll: Callable[[int], None] | None = None) -> int:
        """Wait until the hub's automatic worker has no job left; how many jobs failed.

        ``on_poll(open_jobs)`` is called between polls (to show progress, or to raise if
        another part stopped).

        Raises
        ------
        DemoError
            The hub stopped, or jobs are still open after ``timeout`` seconds.
        """
        from usreview.store import Archive
        from usreview.store.jobs import JobQueue, JobStatus

        deadline = time.monotonic() + timeout
        with Archive.open(None, self.state.root / "archive") as archive:
            queue = JobQueue(archive)
            while True:
                counts = queue.counts()
                open_jobs = counts[JobStatus.PENDING] + counts[JobStatus.RUNNING]
                if open_jobs == 0:
                    return counts[JobStatus.FAILED]
                if not self.child.alive():
                    raise DemoError(
                        f"the hub stopped: {self.child.last_line()} (log: {self.child.log})"
                    )
                if on_poll is not None:
                    on_poll(open_jobs)
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"{open_jobs} processing job(s) still open after {timeout:.0f} s "
                        f"(log: {self.child.log})"
                    )
                time.sleep(0.1)

    def stop(self) -> None:
        self.child.stop(timeout=30.0)


def _refuse_running_hub(state: HubState) -> None:
    if not state.run_info.exists():
        return
    try:
        api_url = state.read_run_info().get("api_url")
        if isinstance(api_url, str) and api_url.startswith("http://127.0.0.1:"):
            urllib.request.urlopen(api_url, timeout=2).close()
        else:
            return
    except (OSError, ValueError, UsreviewError):
        return  # nothing answers: no hub runs on this state
    raise DemoError(
        f"a hub is already running with state {state.root} (API {api_url}); stop it first"
    )


# -- sites --------------------------------------------------------------------------------


def set_toml_value(config: Path, section: str, key: str, literal: str) -> None:
    """Set ``key = literal`` in ``[section]`` of a ``site.toml`` written by ``site init``."""
    lines = config.read_text(encoding="utf-8").splitlines()
    current = ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]")
        elif current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
            lines[i] = f"{key} = {literal}"
            break
    else:
        raise DemoError(f"{config}: no setting {section}.{key}")
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")


def enroll_site(
    state: HubState,
    hub_url: str,
    name: str,
    folder: Path,
    *,
    port: int,
    allowed_calling_ae_titles: Sequence[str] = (SCANNER_AE,),
) -> Path:
    """Enroll a site as its people would; return its ``site.toml``.

    ``usreview site init`` (keys, configuration, the hub's pinned certificate), then
    ``usreview hub add-site`` with the site's public key (the hub must be running), and
    the printed token (mode 0600) and hub key into the folder. The gateway listens on
    127.0.0.1:``port`` and retries the hub within 2 s.
    """
    from usreview.hub.commands import add_site
    from usreview.site import init_site

    site = init_site(
        name,
        hub_url,
        folder,
        hub_certificate=state.tls_cert,
        port=port,
        allowed_calling_ae_titles=allowed_calling_ae_titles,
    )
    added = add_site(state.root, name, site.public_key)
    token = folder / "token"
    token.write_text(added.token + "\n")
    token.chmod(0o600)
    (folder / "hub.pub").write_text(added.hub_public_key_text)
    set_toml_value(site.config, "gateway", "bind", '"127.0.0.1"')
    set_toml_value(site.config, "upload", "backoff_max", "2.0")
    return site.config


def start_gateway(config: Path, log: Path, name: str | None = None) -> Child:
    """``usreview site gateway --config CONFIG`` as a child; returns once it listens."""
    from usreview.site import load_config

    site = load_config(config)
    command = [*USREVIEW, "site", "gateway", "--config", str(config)]
    child = Child(name or f"the gateway of {site.name}", command, log)
    try:
        wait_for_port(site.port, child)
    except BaseException:
        child.stop()
        raise
    return child


def held_at_hub(config: Path) -> dict[str, str]:
    """UID -> plaintext SHA-256 of what the hub's signed receipt says it holds for a site.

    Raises
    ------
    UsreviewError
        The hub cannot be reached or the receipt does not verify with the hub's key.
    """
    from usreview.ingest.receipts import verify_receipt
    from usreview.site import load_config
    from usreview.site.client import HubClient

    site = load_config(config)
    with HubClient(site) as client:
        body = verify_receipt(client.receipts(), site.load_hub_key(), site=site.name)
    return {item["sop_instance_uid"]: item["plaintext_sha256"] for item in body["instances"]}


# -- the scanner ---------------------------------------------------------------------------


@dataclass
class StoreOutcome:
    """What a C-STORE association did: UIDs stored, failures, per-instance seconds."""

    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)


def c_store(
    files: Sequence[Path],
    port: int,
    *,
    host: str = "127.0.0.1",
    called_ae: str = "USREVIEW",
    calling_ae: str = SCANNER_AE,
    pace: float = 0.0,
    on_stored: Callable[[Path, str, float], None] | None = None,
) -> StoreOutcome:
    """Send ``files`` over one association as a scanner does (pynetdicom SCU).

    ``pace`` seconds between the starts of two sends (0: as fast as possible);
    ``on_stored(path, uid, send_time)`` is called after each success.

    Raises
    ------
    DemoError
        The association is refused or cannot be made.
    """
    from pydicom import dcmread
    from pynetdicom import AE

    headers = [dcmread(path, stop_before_pixels=True) for path in files]
    contexts = sorted(
        {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in headers}
    )
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise DemoError(f"the gateway on {host}:{port} refused the association from {calling_ae}")
    outcome = StoreOutcome()
    try:
        for path, ds in zip(files, headers, strict=True):
            uid = str(ds.SOPInstanceUID)
            started = time.monotonic()
            try:
                status = assoc.send_c_store(path)
            except (OSError, RuntimeError, ValueError) as exc:
                outcome.failed[uid] = str(exc)
                continue
            outcome.seconds.append(time.monotonic() - started)
            code = getattr(status, "Status", None)
            if code == 0x0000:
                outcome.stored.append(uid)
                if on_stored is not None:
                    on_stored(path, uid, started)
            else:
                outcome.failed[uid] = "no answer" if code is None else f"status 0x{code:04X}"
            if pace > 0:
                time.sleep(max(0.0, started + pace - time.monotonic()))
    finally:
        assoc.release()
    return outcome


# -- processing at the hub ----------------------------------------------------------------


def measure_stored(state: HubState, archive: Any, site: str, uid: str) -> dict[str, Any]:
    """Open a stored instance with the hub's key and run the pipeline; its JSON summary.

    ``archive`` is an open :class:`usreview.store.Archive` of the hub. The plaintext is
    written to a private temporary folder and removed afterwards.
    """
    from usreview.dicom import read
    from usreview.envelope import unseal
    from usreview.hub.api.sitekeys import SiteKeyFiles
    from usreview.hub.hubkeys import load_hub_keys
    from usreview.processing import run_pipeline
    from usreview.processing.analyze import summarize

    hub_keys = load_hub_keys(state).opening
    ring = SiteKeyFiles(state.sites).stored_ring(site)
    with tempfile.TemporaryDirectory(prefix=".measure-", dir=state.root) as folder:
        plain = Path(folder) / "instance.dcm"
        with archive.open_envelope(site, uid) as envelope:
            unseal(envelope, plain, recipient=hub_keys, keyring=ring)
        instance = read(plain)
        results = run_pipeline(instance)
        summary = summarize(Path(uid + ".dcm"), [k.value for k in instance.kinds], uid, results)
    summary["site"] = site
    summary["study_instance_uid"] = instance.study_instance_uid
    summary["note"] = (
        "automatic measurements: decision support for the reviewing expert, not a diagnosis"
    )
    return summary


def publish_measurements(state: HubState, archive: Any, summary: dict[str, Any]) -> int:
    """Publish a :func:`measure_stored` summary to its site; return the result's id."""
    from usreview.hub.api.publish import publish_result

    with tempfile.TemporaryDirectory(prefix=".publish-", dir=state.root) as folder:
        payload = Path(folder) / "measurements.json"
        payload.write_text(json.dumps(summary, indent=2))
        record = publish_result(
            state,
            archive,
            summary["study_instance_uid"],
            payload,
            sites=[summary["site"]],
            kind="measurements",
            label=summary["sop_instance_uid"],
            actor="usreview-demo",
        )
    return int(record.cursor)


def in_outbox(outbox: Path, result_id: int, kind: str = RESULT_KIND) -> Path | None:
    """The outbox file of the result ``result_id`` of ``kind``, once delivered."""
    return next(iter(outbox.glob(f"*/{result_id:08d}-{kind}.*")), None)
