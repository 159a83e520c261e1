"""A real hub for the API tests: start, stop, restart on the same state and port.

``usreview hub`` runs with its proxy and the hub-managed service over TLS on free
loopback ports; people and sites are added with the real commands; tokens come from
the hub's API. Service settings go into ``STATE/service_config.json`` before start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from jsonschema import Draft202012Validator

from usreview.demo import free_port
from usreview.envelope import PrivateKeys, generate_keys, write_key_pair
from usreview.hub.state import open_state

USREVIEW = [sys.executable, "-m", "usreview.cli"]
START_TIMEOUT = 90.0
API = "/services/usreview/api/v1"
ENVELOPE = "application/vnd.usreview.envelope"
CONTRACT = yaml.safe_load((Path(__file__).parents[1] / "docs" / "openapi.yaml").read_text())
# The calls on one study and its instance; {s} and {i} are their UIDs.
STUDY_CALLS = (
    ("GET", "/studies/{s}"),
    ("GET", "/studies/{s}/priors"),
    ("POST", "/studies/{s}/claim"),
    ("DELETE", "/studies/{s}/claim"),
    ("GET", "/studies/{s}/reports"),
    ("POST", "/studies/{s}/reports"),
    ("GET", "/instances/{i}"),
    ("GET", "/instances/{i}/analysis"),
)
MISSING_STUDY, MISSING_INSTANCE = "1.2.3.4.5", "1.2.3.4.6"
#: The proxy closes a kept-alive connection idle 5 s; one idle this long is not reused, so
#: that its close cannot cross a request (a loaded proxy may close it late, just then).
REUSE_LIMIT = 4.0


def shown_once(output: str) -> str:
    match = re.search(r"shown once: (\S+)", output)
    assert match, output
    return match.group(1)


@dataclass
class Site:
    name: str
    token: str
    keys: PrivateKeys


@dataclass
class HubRun:
    """One hub's state directory and port; :meth:`start` and :meth:`stop` it."""

    root: Path
    settings: dict[str, Any]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    site_port: int | None = None  # the sites' port (--site-port), if any
    _last_request: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        open_state(self.state)
        # Two serving processes unless a test says otherwise (the default is two per
        # core: four service processes and their parsing workers per hub would make
        # each test's hub slower to start without testing more).
        settings = {"processes": 2, **self.settings}
        (self.state / "service_config.json").write_text(json.dumps({"ServiceSettings": settings}))
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = str(self.cert)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def site_url(self) -> str:
        """The sites' port's URL (the hub must have one)."""
        assert self.site_port is not None
        return f"https://127.0.0.1:{self.site_port}"

    @property
    def cert(self) -> Path:
        return self.state / "tls.crt"

    @property
    def log(self) -> Path:
        return self.root / "hub.log"

    def start(self) -> None:
        command = [*USREVIEW, "hub", "--state", str(self.state), "--ip", "127.0.0.1"]
        command += ["--port", str(self.port)]
        if self.site_port is not None:
            command += ["--site-port", str(self.site_port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
            )
        self.wait_for_service()

    def wait_for_service(self, timeout: float = START_TIMEOUT) -> float:
        """Wait until the proxy routes to a serving service; return the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            assert self.process is not None and self.process.poll() is None, self.tail()
            assert time.monotonic() < deadline, self.tail()
            if self.cert.exists():
                try:
                    if self.get("/whoami").status_code == 401:
                        return time.monotonic() - started
                except requests.ConnectionError:
                    pass
            time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    @contextmanager
    def running(self) -> Iterator[Path]:
        """Start the hub, yield an empty work folder beside its state, stop it on exit."""
        try:
            self.start()
            folder = self.root / "work"
            folder.mkdir()
            yield folder
        finally:
            self.stop()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    # -- requests ---------------------------------------------------------------------

    def request(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"token {token}"
        kwargs.setdefault("timeout", 60)
        return self._send(method, self.url + API + path, headers=headers, **kwargs)

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        if time.monotonic() - self._last_request >= REUSE_LIMIT:
            self.http.close()  # its connections: the next request opens a new one
        try:
            return self.http.request(method, url, **kwargs)
        finally:
            self._last_request = time.monotonic()

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, token, **kwargs)

    def upload(
        self, uid: str, body: bytes, token: str, content_type: str = ENVELOPE
    ) -> requests.Response:
        return self.request(
            "PUT", f"/instances/{uid}", token, data=body, headers={"Content-Type": content_type}
        )

    # -- people and sites ---------------------------------------------------------------

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``usreview hub ARGS --state STATE``, whatever its exit status."""
        return subprocess.run(
            [*USREVIEW, "hub", *args, "--state", str(self.state)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def cli(self, *args: str) -> str:
        """The output of ``usreview hub ARGS --state STATE``, which must succeed."""
        result = self.run_cli(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def add_site(self, name: str) -> Site:
        keys = generate_keys(name)
        folder = self.root / "sites" / name
        folder.mkdir(parents=True)
        write_key_pair(keys, folder)
        out = self.cli("add-site", name, "--public-key", str(folder / f"{name}.pub"))
        return Site(name, shown_once(out), keys)

    def add_person(self, name: str, role: str) -> str:
        """Register a person; return an API token they asked for with their password."""
        return self.token(name, shown_once(self.cli("add-user", name, "--role", role)))

    def token(self, name: str, password: str) -> str:
        """An API token ``name`` asks the running hub for with their password."""
        response = self._send(
            "POST",
            f"{self.url}/hub/api/users/{name}/tokens",
            json={"auth": {"username": name, "password": password}, "note": "test"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


def error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """The JSON body of an API error, checked to be ``status`` with error ``code``."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["error"] == code, body
    return body


def conforms(body: Any, schema: str) -> None:
    """``body`` is valid for the contract's component ``schema``."""
    validator = Draft202012Validator(
        {"components": CONTRACT["components"], "$ref": f"#/components/schemas/{schema}"}
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, errors


def hidden_like_missing(
    hub: HubRun, token: str, call: tuple[str, str], study: str, instance: str, body: Any
) -> None:
    """``call`` on a real study answers ``token`` with the 404 of a missing one."""
    method, path = call
    kwargs: dict[str, Any] = {"json": body} if method == "POST" else {}
    real = hub.request(method, path.format(s=study, i=instance), token, **kwargs)
    fake = hub.request(method, path.format(s=MISSING_STUDY, i=MISSING_INSTANCE), token, **kwargs)
    hidden, absent = error(real, 404, "not_found"), error(fake, 404, "not_found")
    conforms(hidden, "Error")
    assert hidden["message"].replace(study, "X").replace(instance, "X") == (
        absent["message"].replace(MISSING_STUDY, "X").replace(MISSING_INSTANCE, "X")
    ), call


def service_pids(state: Path, module: str = "usreview.hub.service") -> list[int]:
    """Processes running ``module`` (the service) on ``state`` (whoever started them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if module.encode() not in cmdline:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"USREVIEW_STATE={state}".encode() in environ:
            found.append(int(entry.name))
    return found


def service_launch(pid: int) -> tuple[list[str], dict[str, str], str]:
    """The command, environment and working directory the hub gave service ``pid``."""
    proc = Path("/proc") / str(pid)
    cmd = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
    env = dict(
        item.decode().split("=", 1)
        for item in (proc / "environ").read_bytes().split(b"\0")
        if b"=" in item
    )
    return cmd, env, os.readlink(proc / "cwd")


def admin_audit(state: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Actor, resource, outcome and detail of each ``admin`` line of ``STATE/audit.log``,
    once its whole chain verifies."""
    from usreview.hub.audit import verify

    report = verify(state / "audit.log", (state / "audit.key").read_bytes())
    assert report.ok, report
    lines = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    return [
        (x["actor"], x["resource"], x["outcome"], x["detail"])
        for x in lines
        if x["action"] == "admin"
    ]
