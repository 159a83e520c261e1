"""A whole deployment for the review tests: a hub, three sites with gateways, studies, people.

The hub runs as ``usreview hub`` (TLS, proxy, service, worker) on free loopback ports;
each site is enrolled as its people would (``site init``, ``hub add-site``) on the hub's
sites' port (``--site-port``: its gateway uploads and takes its results there, over TLS to
the service itself) and runs its gateway; studies are simulated and sent by C-STORE as a
scanner would; reviewers log in with the hub's login form in a real chromium (Playwright)
and land on their dashboards, through the proxy.

Sites: ``north`` sends a PW Doppler and a B-mode study, ``south`` a PW Doppler and an
M-mode study, ``west`` (a referring clinic) sends nothing.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usreview.demo import (
    Child,
    HubProcess,
    c_store,
    enroll_site,
    free_port,
    start_gateway,
)

API = "/services/usreview/api/v1"
SENT = {"north": ("pw", "bmode"), "south": ("pw", "mmode"), "west": ()}
REVIEWERS = ("rita", "omar")


@dataclass
class SiteRun:
    name: str
    config: Path
    outbox: Path
    gateway: Child
    port: int


@dataclass
class Study:
    """One simulated study as sent: its site, kind, UIDs and ground truth."""

    site: str
    kind: str
    study_uid: str
    sop_uid: str
    path: Path
    truth: dict[str, Any]


@dataclass
class Deployment:
    root: Path
    hub: HubProcess
    sites: dict[str, SiteRun]
    passwords: dict[str, str]
    tokens: dict[str, str]
    studies: list[Study] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.hub.url

    def study(self, site: str, kind: str) -> Study:
        return next(s for s in self.studies if s.site == site and s.kind == kind)

    def api(self, method: str, path: str, person: str, body: Any = None) -> tuple[int, Any]:
        """Call the service as ``person`` (their own API token); ``(status, JSON)``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + API + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"token {self.tokens[person]}",
                "Content-Type": "application/json",
            },
        )
        context = ssl.create_default_context(cafile=str(self.hub.state.tls_cert))
        try:
            with urllib.request.urlopen(request, context=context, timeout=60) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def stop(self) -> None:
        for site in self.sites.values():
            site.gateway.stop()
        self.hub.stop()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def start_deployment(root: Path) -> Deployment:
    """Start everything and wait until every study is stored and analysed at the hub."""
    from usreview.hub.commands import add_user
    from usreview.simulate import KINDS, simulate

    root.mkdir(parents=True, exist_ok=True)
    hub = HubProcess.start(root / "hub", free_port(), root / "hub.log", site_port=free_port())
    deployment = Deployment(root, hub, {}, {}, {})
    try:
        for person in REVIEWERS:
            deployment.passwords[person] = add_user(hub.state.root, person, "reviewer").password
            deployment.tokens[person] = _token(deployment, person)
        for number, (name, kinds) in enumerate(SENT.items()):
            port = free_port()
            folder = root / "sites" / name
            config = enroll_site(hub.state, hub.site_url, name, folder, port=port)
            gateway = start_gateway(config, root / f"gateway-{name}.log")
            outbox = folder / "outbox"
            deployment.sites[name] = SiteRun(name, config, outbox, gateway, port)
            for kind in kinds:
                made = simulate(
                    kind, root / "studies" / name / kind, seed=KINDS.index(kind) + 10 * number
                )
                for path in made:
                    truth = json.loads(path.with_name(path.stem + ".truth.json").read_text())
                    deployment.studies.append(
                        Study(
                            name,
                            kind,
                            str(truth["study_instance_uid"]),
                            str(truth["sop_instance_uid"]),
                            path,
                            truth,
                        )
                    )
                outcome = c_store(made, port)
                assert not outcome.failed, outcome.failed
        wait_until(lambda: _all_analysed(deployment), 240, "every study analysed at the hub")
    except BaseException:
        deployment.stop()
        raise
    return deployment


def _token(deployment: Deployment, person: str) -> str:
    request = urllib.request.Request(
        f"{deployment.url}/hub/api/users/{person}/tokens",
        data=json.dumps(
            {
                "auth": {"username": person, "password": deployment.passwords[person]},
                "note": "review tests",
            }
        ).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(deployment.hub.state.tls_cert))
    with urllib.request.urlopen(request, context=context, timeout=60) as response:
        return str(json.loads(response.read())["token"])


def _all_analysed(deployment: Deployment) -> bool:
    person = REVIEWERS[0]
    for study in deployment.studies:
        status, body = deployment.api("GET", f"/studies/{study.study_uid}", person)
        if status != 200:
            return False
        for series in body["series"]:
            for instance in series["instances"]:
                if (instance.get("processing") or {}).get("status") not in ("done", "failed"):
                    return False
    return True
