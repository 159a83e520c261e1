"""``usreview demo``: the whole system on one machine, on embedded defaults.

:func:`run_demo` does, with one progress line on stderr per step:

1. simulate each site's studies (``OUT/studies/SITE/KIND/``, kept for the next run);
2. start the hub (``usreview hub``: state in ``OUT/hub``, TLS, 127.0.0.1, the port of the
   last run, else 8000, else a free one);
3. add a reviewer (the generated password is printed once, when the reviewer is created);
4. enroll three sites as their people would (``usreview site init`` in
   ``OUT/sites/NAME``, ``usreview hub add-site``, token and hub key into the folder);
5. start their gateways (``usreview site gateway``);
6. send each site's studies to its gateway by DICOM C-STORE, as a scanner would;
7. wait for the hub's signed receipts naming every instance sent;
8. wait until the hub's automatic worker (the ``usreview-worker`` service) has processed
   every stored instance and sealed its results (a DICOM SR and a JSON summary) to its site;
9. wait until every site's outbox holds those results;
10. print the summary (also in ``OUT/summary.json``) and keep the hub and the gateways
    running until Ctrl-C, or stop them at once (``exit_after_summary``).

Running it again on the same ``OUT`` reuses everything (same keys, sites, studies; the
hub acknowledges the instances again as duplicates and processes nothing twice). Children
left by a demo that was killed are stopped first. Logs of the children are in ``OUT/logs/``.

The helpers (:class:`HubProcess`, :func:`enroll_site`, :func:`start_gateway`,
:func:`c_store`, :func:`held_at_hub`, :func:`measure_stored`, :func:`publish_measurements`)
are also what the benchmarks drive (the latency benchmark publishes with
:func:`publish_measurements` as kind ``measurements``).
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from usreview.errors import UsreviewError
from usreview.hub.state import HubState, open_state

__all__ = [
    "DEFAULT_HUB_PORT",
    "SCANNER_AE",
    "SITES",
    "Child",
    "DemoError",
    "DemoSite",
    "HubProcess",
    "StoreOutcome",
    "c_store",
    "enroll_site",
    "free_port",
    "held_at_hub",
    "measure_stored",
    "publish_measurements",
    "run_demo",
    "start_gateway",
]

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

#: Quantity name -> key of the simulator's truth.json holding its true value.
_TRUTH_KEYS = {
    "peak_systolic_velocity": "psv_cm_s",
    "end_diastolic_velocity": "edv_cm_s",
    "resistive_index": "ri",
    "pulsatility_index": "pi",
    "velocity_time_integral": "vti_cm",
    "heart_rate": "heart_rate_bpm",
    "peak_velocity": "psv_cm_s",
    "lv_internal_dimension_diastole": "lvidd_mm",
    "lv_internal_dimension_systole": "lvids_mm",
    "fractional_shortening": "fractional_shortening",
    "volume": "volume_ml",
}
_SHOWN = {  # quantities printed in the summary, per kind, with short labels
    "pw": (("peak_systolic_velocity", "PSV"), ("end_diastolic_velocity", "EDV"),
           ("resistive_index", "RI"), ("pulsatility_index", "PI")),
    "cw": (("peak_velocity", "peak velocity"), ("velocity_time_integral", "VTI")),
    "mmode": (("lv_internal_dimension_diastole", "LVIDd"), ("fractional_shortening", "FS")),
    "volume": (("volume", "volume"),),
}  # fmt: skip


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


def _port_free(port: int) -> bool:
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

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

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
    ) -> HubProcess:
        """Start the hub and wait until its proxy routes to the usreview service.

        ``settings`` are written to ``STATE/service_config.json`` (``ServiceSettings``)
        before the start; ``on_spawn(child)`` is called as soon as the process exists.

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
        child = Child("the hub", [*command, "--port", str(port)], log, cwd=state.root)
        hub = cls(state, port, child)
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
    from usreview.envelope import load_private_keys, unseal
    from usreview.hub.api.sitekeys import SiteKeyFiles
    from usreview.processing import run_pipeline
    from usreview.processing.analyze import summarize

    hub_keys = load_private_keys(state.hub_key)
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


def in_outbox(outbox: Path, result_id: int) -> Path | None:
    """The outbox file of a measurements result, once delivered."""
    return next(iter(outbox.glob(f"*/{result_id:08d}-{RESULT_KIND}.json")), None)


# -- the demo -----------------------------------------------------------------------------


def _say(message: str) -> None:
    sys.stderr.write(f"demo: {message}\n")
    sys.stderr.flush()


@dataclass
class _SiteRun:
    site: DemoSite
    folder: Path
    files: list[Path] = field(default_factory=list)
    truth: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> truth.json
    kind_of: dict[str, str] = field(default_factory=dict)  # uid -> simulated kind
    config: Path | None = None
    gateway: Child | None = None
    sent: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=dict)  # uid -> result id
    delivered: dict[str, str] = field(default_factory=dict)  # uid -> outbox path
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Demo:
    def __init__(self, out: Path, port: int | None, timeout: float) -> None:
        self.out = out.resolve()
        self.requested_port = port
        self.timeout = timeout
        self.logs = self.out / "logs"
        self.run_file = self.out / "run.json"
        self.hub: HubProcess | None = None
        self.sites = [_SiteRun(s, self.out / "sites" / s.name) for s in SITES]
        self.password: str | None = None
        self.started = time.monotonic()
        self._ports: set[int] = set()  # handed out to listeners that start later

    # -- bookkeeping of children, so that a killed demo's are stopped by the next run

    def _record_pid(self, child: Child) -> None:
        saved = json.loads(self.run_file.read_text()) if self.run_file.exists() else {}
        saved["children"] = [*saved.get("children", []), child.pid]
        self.run_file.write_text(json.dumps(saved))

    def _children(self) -> list[Child]:
        found = [s.gateway for s in self.sites if s.gateway is not None]
        return found + ([self.hub.child] if self.hub is not None else [])

    def _stop_leftovers(self) -> None:
        if not self.run_file.exists():
            return
        try:
            pids = [int(p) for p in json.loads(self.run_file.read_text()).get("children", [])]
        except (ValueError, TypeError, AttributeError):
            return
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.out).encode() not in cmdline or b"usreview" not in cmdline:
                continue  # not ours any more (the pid was reused)
            _say(f"stopping process {pid} left by an earlier demo on {self.out}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        saved = json.loads(self.run_file.read_text())
        saved["children"] = []
        self.run_file.write_text(json.dumps(saved))

    def stop(self) -> None:
        for site in self.sites:
            if site.gateway is not None:
                site.gateway.stop()
        if self.hub is not None:
            self.hub.stop()
        if self.run_file.exists():
            with contextlib.suppress(OSError, ValueError):
                saved = json.loads(self.run_file.read_text())
                saved["children"] = []
                self.run_file.write_text(json.dumps(saved))

    # -- steps

    def simulate(self) -> None:
        from usreview.simulate import KINDS, simulate

        made = 0
        for site in self.sites:
            for kind in site.site.kinds:
                folder = self.out / "studies" / site.site.name / kind
                paths = sorted(folder.glob("*.dcm"))
                if not paths:
                    paths = simulate(kind, folder, seed=KINDS.index(kind))
                    made += len(paths)
                for path in paths:
                    truth = json.loads(path.with_name(path.stem + ".truth.json").read_text())
                    uid = str(truth["sop_instance_uid"])
                    site.truth[uid] = truth
                    site.kind_of[uid] = kind
                    site.files.append(path)
        total = sum(len(s.files) for s in self.sites)
        reused = "" if made == total else f" ({total - made} from an earlier run)"
        _say(f"simulated {total} instances under {self.out / 'studies'}{reused}")

    def _hub_port(self) -> int:
        if self.requested_port is not None:
            if not _port_free(self.requested_port):
                raise DemoError(f"port {self.requested_port} is in use: choose another --port")
            return self.requested_port
        saved = json.loads(self.run_file.read_text()) if self.run_file.exists() else {}
        for port in (saved.get("hub_port"), DEFAULT_HUB_PORT):
            if isinstance(port, int) and _port_free(port):
                self._ports.add(port)
                return port
        return free_port(besides=self._ports)

    def start_hub(self) -> None:
        state_dir = self.out / "hub"
        fresh = not (state_dir / "hub.key").exists()
        if fresh:  # a new hub knows none of the old sites: enroll them again
            for site in self.sites:
                if (site.folder / "site.toml").exists():
                    _say(f"{site.folder} belongs to an earlier hub; enrolling it again")
                    _remove_site_folder(site.folder)
        port = self._hub_port()
        _say(f"starting the hub on https://127.0.0.1:{port} (state {state_dir}) ...")
        self.hub = HubProcess.start(
            state_dir, port, self.logs / "hub.log", on_spawn=self._record_pid
        )
        saved = json.loads(self.run_file.read_text())
        saved["hub_port"] = port
        self.run_file.write_text(json.dumps(saved))
        _say(f"hub ready in {time.monotonic() - self.started:.1f} s")

    def add_reviewer(self) -> None:
        from usreview.hub.accounts import Accounts
        from usreview.hub.commands import add_user

        assert self.hub is not None
        if Accounts(self.hub.state.accounts).is_person(REVIEWER):
            _say(f"reviewer {REVIEWER!r} exists (its password was printed when it was created)")
            return
        person = add_user(self.hub.state.root, REVIEWER, "reviewer")
        self.password = person.password
        _say(f"added reviewer {REVIEWER!r}")

    def enroll(self) -> None:
        from usreview.hub.accounts import Accounts

        assert self.hub is not None
        accounts = Accounts(self.hub.state.accounts)
        registered = set(accounts.groups().get("sites", []))
        for site in self.sites:
            config = site.folder / "site.toml"
            complete = all(
                (site.folder / name).exists() for name in ("site.toml", "token", "hub.pub")
            )
            name = site.site.name
            if complete and name in registered:
                set_toml_value(config, "hub", "url", json.dumps(self.hub.url))
                port = free_port(besides=self._ports)
                set_toml_value(config, "gateway", "port", str(port))
                site.config = config
                _say(f"site {name}: reusing {site.folder}")
                continue
            if name in registered:
                raise DemoError(
                    f"site {name} is registered at the hub but {site.folder} is incomplete; "
                    f"remove {self.out / 'hub'} and {self.out / 'sites'} to start over"
                )
            if site.folder.exists():
                _remove_site_folder(site.folder)
            site.config = enroll_site(
                self.hub.state, self.hub.url, name, site.folder, port=free_port(besides=self._ports)
            )
            _say(f"site {name}: enrolled in {site.folder} (site init, hub add-site)")

    def start_gateways(self) -> None:
        from usreview.site import load_config

        for site in self.sites:
            assert site.config is not None
            command = [*USREVIEW, "site", "gateway", "--config", str(site.config)]
            log = self.logs / f"{site.site.name}-gateway.log"
            site.gateway = Child(f"the gateway of {site.site.name}", command, log)
            self._record_pid(site.gateway)
        for site in self.sites:
            assert site.config is not None and site.gateway is not None
            port = load_config(site.config).port
            wait_for_port(port, site.gateway)
            _say(f"gateway {site.site.name} listening on 127.0.0.1:{port} (AE USREVIEW)")

    def send(self) -> None:
        from usreview.site import load_config

        for site in self.sites:
            assert site.config is not None
            port = load_config(site.config).port
            outcome = c_store(site.files, port)
            if outcome.failed:
                uid, why = next(iter(outcome.failed.items()))
                raise DemoError(
                    f"site {site.site.name}: the gateway refused {len(outcome.failed)} "
                    f"instance(s), e.g. {uid}: {why} (log: {self.logs})"
                )
            site.sent = outcome.stored
            mb = sum(p.stat().st_size for p in site.files) / 1e6
            _say(
                f"scanner -> {site.site.name}: C-STORE of {len(site.sent)} instance(s) "
                f"({mb:.1f} MB) succeeded"
            )

    def wait_for_receipts(self) -> None:
        deadline = time.monotonic() + self.timeout
        for site in self.sites:
            assert site.config is not None
            last = "no answer yet"
            while True:
                try:
                    held = held_at_hub(site.config)
                    site.acknowledged = [uid for uid in site.sent if uid in held]
                    if len(site.acknowledged) == len(site.sent):
                        break
                    last = f"{len(site.acknowledged)} of {len(site.sent)} acknowledged"
                except UsreviewError as exc:
                    last = str(exc)
                self._check_children()
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"site {site.site.name}: the hub's receipt does not name every "
                        f"instance sent after {self.timeout:.0f} s ({last}; see "
                        f"usreview site status --config {site.config})"
                    )
                time.sleep(0.2)
            _say(
                f"hub receipt (signed, verified) for {site.site.name}: "
                f"{len(site.acknowledged)}/{len(site.sent)} instance(s) stored"
            )

    def wait_for_processing(self) -> None:
        """Wait until the hub's automatic worker has processed every stored instance."""
        from usreview.store import Archive
        from usreview.store.jobs import JobQueue, JobStatus

        assert self.hub is not None
        deadline = time.monotonic() + self.timeout
        with Archive.open(None, self.hub.state.root / "archive") as archive:
            queue = JobQueue(archive)
            while True:
                counts = queue.counts()
                open_jobs = counts.get(JobStatus.PENDING, 0) + counts.get(JobStatus.RUNNING, 0)
                if open_jobs == 0:
                    break
                self._check_children()
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"{open_jobs} processing job(s) still open after {self.timeout:.0f} s "
                        f"(log: {self.logs})"
                    )
                time.sleep(0.2)
            failed = counts.get(JobStatus.FAILED, 0)
            for site in self.sites:
                name = site.site.name
                for record in archive.results.results_since(name, 0, limit=1000):
                    if record.kind == RESULT_KIND:
                        site.results[str(record.cursor)] = int(record.cursor)
        note = f"; {failed} job(s) failed (usreview hub jobs --failed)" if failed else ""
        _say(f"the hub's worker processed every stored instance automatically{note}")

    def wait_for_outboxes(self) -> None:
        from usreview.site import load_config

        deadline = time.monotonic() + self.timeout
        for site in self.sites:
            assert site.config is not None
            outbox = load_config(site.config).outbox
            wanted = set(site.results.values())
            while True:
                for result_id in wanted:
                    found = in_outbox(outbox, result_id)
                    if found is None:
                        continue
                    summary = json.loads(found.read_text())
                    uid = str(summary.get("sop_instance_uid", result_id))
                    site.delivered[uid] = str(found)
                    site.summaries[uid] = summary
                    site.results[uid] = result_id
                    site.results.pop(str(result_id), None)
                if len(site.delivered) == len(wanted):
                    break
                self._check_children()
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"site {site.site.name}: {len(site.delivered)} of "
                        f"{len(wanted)} result(s) in {outbox} after "
                        f"{self.timeout:.0f} s (log: {site.gateway and site.gateway.log})"
                    )
                time.sleep(0.1)
            _say(f"{site.site.name}: {len(site.delivered)} result(s) in its outbox {outbox}")

    def _check_children(self) -> None:
        for child in self._children():
            if not child.alive():
                raise DemoError(f"{child.name} stopped: {child.last_line()} (log: {child.log})")

    # -- the summary

    def summary(self) -> dict[str, Any]:
        assert self.hub is not None
        sites = []
        measurements = []
        for site in self.sites:
            assert site.config is not None
            sites.append(
                {
                    "name": site.site.name,
                    "folder": str(site.folder),
                    "config": str(site.config),
                    "kinds": list(site.site.kinds),
                    "instances_sent": len(site.sent),
                    "acknowledged": len(site.acknowledged),
                    "results_published": len(site.results),
                    "results_received": len(site.delivered),
                    "outbox": sorted(site.delivered.values()),
                }
            )
            for uid, summary in site.summaries.items():
                quantities = {
                    q["name"]: {"value": q["value"], "unit": q["unit"]}
                    for q in summary["quantities"]
                }
                truth = _truth_values(site.truth.get(uid, {}), quantities)
                measurements.append(
                    {
                        "site": site.site.name,
                        "kind": site.kind_of.get(uid, "?"),
                        "sop_instance_uid": uid,
                        "result_id": site.results.get(uid),
                        "quantities": quantities,
                        "truth": truth,
                        "recommendations": [r["text"] for r in summary["recommendations"]],
                    }
                )
        return {
            "hub": {
                "url": self.hub.url,
                "login": f"{self.hub.url}/hub/login",
                "state": str(self.hub.state.root),
                "certificate": str(self.hub.state.tls_cert),
                "reviewer": REVIEWER,
            },
            "sites": sites,
            "measurements": measurements,
            "logs": str(self.logs),
            "seconds_to_summary": round(time.monotonic() - self.started, 1),
        }

    def print_summary(self, data: dict[str, Any], keep_running: bool) -> None:
        hub = data["hub"]
        if self.password is not None:
            login = f"{REVIEWER} / {self.password}   (password shown once: note it now)"
        else:
            login = f"{REVIEWER} (password printed when it was created; new OUT to start over)"
        lines = [
            "",
            "usreview demo: hub, 3 sites and their gateways are running"
            if keep_running
            else "usreview demo: done (hub and gateways stopped after the summary)",
            f"  hub        {hub['url']}/   (TLS certificate {hub['certificate']})",
            f"  reviewer   {login}",
            f"             log in at {hub['login']}: the worklist of every site's studies opens",
            "",
            f"  {'site':<10} {'kinds':<18} {'sent':>5} {'acknowledged':>13} {'results':>8}",
        ]
        for site in data["sites"]:
            lines.append(
                f"  {site['name']:<10} {', '.join(site['kinds']):<18} "
                f"{site['instances_sent']:>5} {site['acknowledged']:>13} "
                f"{site['results_received']:>8}"
            )
        lines += ["", "  measurements (mean over complete cycles; truth from the simulator)"]
        for item in data["measurements"]:
            shown = _SHOWN.get(item["kind"])
            if not shown:
                continue
            parts = []
            for name, label in shown:
                q = item["quantities"].get(name)
                if q is None:
                    continue
                true = item["truth"].get(name)
                unit = "" if q["unit"] == "1" else f" {q['unit']}"
                truth = f" (truth {true:.3g})" if isinstance(true, int | float) else ""
                parts.append(f"{label} {q['value']:.3g}{unit}{truth}")
            lines.append(f"    {item['site']} {item['kind']}: " + ", ".join(parts))
        first = next(iter(self.sites))
        lines += [
            "",
            f"  results are in each site's outbox, e.g. {first.folder / 'outbox'}",
            f"  status of a site: usreview site status --config {first.config}",
            f"  logs: {data['logs']}; summary: {self.out / 'summary.json'}",
            f"  ready in {data['seconds_to_summary']:.1f} s"
            + ("; Ctrl-C stops the hub and the gateways" if keep_running else ""),
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    def run(self, exit_after_summary: bool) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self._stop_leftovers()
        self.simulate()
        self.start_hub()
        self.add_reviewer()
        self.enroll()
        self.start_gateways()
        self.send()
        self.wait_for_receipts()
        self.wait_for_processing()
        self.wait_for_outboxes()
        data = self.summary()
        (self.out / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
        self.print_summary(data, keep_running=not exit_after_summary)
        if exit_after_summary:
            return 0
        try:
            while True:
                self._check_children()
                time.sleep(1.0)
        except KeyboardInterrupt:
            _say("stopping the gateways and the hub ...")
            return 0


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has ended


def _remove_site_folder(folder: Path) -> None:
    import shutil

    if not (folder / "site.toml").exists() and any(folder.iterdir()):
        raise DemoError(f"{folder} is not a site folder of the demo; move it away")
    shutil.rmtree(folder)


def _truth_values(truth: dict[str, Any], quantities: Iterable[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    nested = [v for v in truth.values() if isinstance(v, dict)]
    for name in quantities:
        key = _TRUTH_KEYS.get(name)
        if key is None:
            continue
        for place in (truth, *nested):
            value = place.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found[name] = float(value)
                break
    return found


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starting the demo in the background may have ignored it.
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, raise_interrupt),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_demo(
    out: Path,
    *,
    port: int | None = None,
    exit_after_summary: bool = False,
    timeout: float = 120.0,
) -> int:
    """Run the demo in ``out`` (see the module docstring); return the exit status.

    Every child process is stopped before this returns or raises, also on Ctrl-C or
    SIGTERM.

    Raises
    ------
    UsreviewError
        A step failed (:class:`DemoError`, or the error of the package that failed).
    KeyboardInterrupt
        Interrupted before the summary.
    """
    demo = _Demo(Path(out), port, timeout)
    with _sigterm_as_interrupt():
        try:
            return demo.run(exit_after_summary)
        finally:
            demo.stop()
