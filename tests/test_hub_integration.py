"""A real hub: ``usreview hub`` with its proxy and service on free loopback ports, over TLS.

One hub for the whole module (starting one takes a few seconds). The reviewer is
registered before the start (loaded from the registry), the trainee and the site
while it runs (through the hub's API).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.hub_api_support import HubRun, admin_audit, service_pids
from tests.site_helpers import command_line, wait_until
from usreview.demo import free_port
from usreview.hub.state import open_state

pytestmark = pytest.mark.slow

USREVIEW = [sys.executable, "-m", "usreview.cli"]
START_TIMEOUT = 90.0


@dataclass
class Hub:
    process: subprocess.Popen[bytes]
    url: str
    state: Path
    cert: Path
    log: Path
    reviewer_password: str

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.url + path, verify=str(self.cert), timeout=30, **kwargs)

    def post(self, path: str, **kwargs: object) -> requests.Response:
        return requests.post(self.url + path, verify=str(self.cert), timeout=30, **kwargs)

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [*USREVIEW, "hub", *args, "--state", str(self.state)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


def _shown_once(output: str) -> str:
    match = re.search(r"shown once: (\S+)", output)
    assert match, output
    return match.group(1)


def _stop(process: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return time.monotonic() - started


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    from usreview.hub.errors import ProxyNotFoundError
    from usreview.hub.proxy import find_proxy

    try:
        find_proxy()
    except ProxyNotFoundError as exc:
        pytest.fail(str(exc))
    root = tmp_path_factory.mktemp("hub")
    state = root / "state"
    added = subprocess.run(
        [*USREVIEW, "hub", "add-user", "rev", "--role", "reviewer", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    port = free_port()
    log = root / "hub.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*USREVIEW, "hub", "--state", str(state), "--ip", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
        )
    hub = Hub(
        process,
        f"https://127.0.0.1:{port}",
        state,
        state / "tls.crt",
        log,
        _shown_once(added.stdout),
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            if not hub.cert.exists():
                time.sleep(0.3)
                continue
            try:
                # Ready when the proxy routes to the service (401: it asks for a token).
                if hub.get("/services/usreview/api/v1/whoami").status_code == 401:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        yield hub
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def site_token(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> str:
    keys = tmp_path_factory.mktemp("site")
    subprocess.run(
        [*USREVIEW, "keys", "new", "clinic", "--dir", str(keys)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    out = hub.cli("add-site", "clinic", "--public-key", str(keys / "clinic.pub"))
    assert (hub.state / "hub.pub").read_text() in out
    assert (hub.state / "sites" / "clinic.pub").read_bytes() == (keys / "clinic.pub").read_bytes()
    return _shown_once(out)


@pytest.fixture(scope="module")
def trainee_token(hub: Hub) -> str:
    password = _shown_once(hub.cli("add-user", "tina", "--role", "trainee"))
    # A person asks the hub for a token of their own with their password.
    response = hub.post(
        "/hub/api/users/tina/tokens",
        json={"auth": {"username": "tina", "password": password}, "note": "test"},
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def _login(hub: Hub, name: str, password: str) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    session.trust_env = False  # else $REQUESTS_CA_BUNDLE would replace the verify below
    session.verify = str(hub.cert)
    form = session.get(hub.url + "/hub/login", timeout=30)
    assert form.status_code == 200
    match = re.search(r'name="_xsrf"\s+value="([^"]+)"', form.text)
    assert match, form.text
    response = session.post(
        hub.url + "/hub/login",
        data={"username": name, "password": password, "_xsrf": match.group(1)},
        allow_redirects=False,
        timeout=30,
    )
    return session, response


def test_the_public_endpoint_is_tls_only(hub: Hub) -> None:
    assert hub.get("/hub/api/").json()["version"]
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(hub.url + "/hub/api/", timeout=10)  # not trusted without the cert
    with pytest.raises(requests.ConnectionError):
        requests.get(hub.url.replace("https", "http") + "/hub/api/", timeout=10)


def test_reviewer_logs_in_with_the_form(hub: Hub) -> None:
    session, response = _login(hub, "rev", hub.reviewer_password)
    assert response.status_code == 302, response.text
    home = session.get(hub.url + "/hub/home", allow_redirects=False, timeout=30)
    assert home.status_code == 200
    assert "rev" in home.text


def test_wrong_password_fails(hub: Hub) -> None:
    session, response = _login(hub, "rev", hub.reviewer_password + "x")
    assert response.status_code == 403
    home = session.get(hub.url + "/hub/home", allow_redirects=False, timeout=30)
    assert home.status_code == 302 and "/hub/login" in home.headers["Location"]


def test_unknown_user_fails(hub: Hub) -> None:
    _, response = _login(hub, "nobody", hub.reviewer_password)
    assert response.status_code == 403


def test_site_token_reaches_the_service(hub: Hub, site_token: str) -> None:
    response = hub.get(
        "/services/usreview/api/v1/whoami", headers={"Authorization": f"token {site_token}"}
    )
    assert response.status_code == 200, response.text
    me = response.json()
    assert me["name"] == "clinic" and me["kind"] == "user"
    assert me["groups"] == ["sites"]
    assert "custom:usreview:upload" in me["scopes"]
    assert "access:services!service=usreview" in me["scopes"]


def test_site_token_cannot_start_a_server_or_read_users(hub: Hub, site_token: str) -> None:
    auth = {"Authorization": f"token {site_token}"}
    assert hub.post("/hub/api/users/clinic/server", headers=auth).status_code == 403
    assert hub.get("/hub/api/users/rev", headers=auth).status_code in (403, 404)
    assert hub.get("/hub/api/users", headers=auth).status_code == 403
    assert hub.post("/hub/api/users/clinic/tokens", headers=auth, json={}).status_code == 403


def test_service_errors_are_json(hub: Hub, site_token: str) -> None:
    missing = hub.get("/services/usreview/api/v1/whoami")
    assert missing.status_code == 401 and missing.json()["status"] == 401
    bad = hub.get("/services/usreview/api/v1/whoami", headers={"Authorization": "token nope"})
    assert bad.status_code == 403 and "message" in bad.json()
    unknown = hub.get(
        "/services/usreview/api/v1/nope", headers={"Authorization": f"token {site_token}"}
    )
    assert unknown.status_code == 404 and unknown.json()["status"] == 404


def test_trainee_cannot_touch_the_reviewer(hub: Hub, trainee_token: str) -> None:
    auth = {"Authorization": f"token {trainee_token}"}
    assert hub.get("/hub/api/users/tina", headers=auth).status_code == 200
    assert hub.get("/hub/api/users/rev", headers=auth).status_code == 404
    assert hub.post("/hub/api/users/rev/server", headers=auth).status_code == 404
    assert hub.post("/hub/api/users/rev/tokens", headers=auth, json={}).status_code == 403
    me = hub.get("/services/usreview/api/v1/whoami", headers=auth).json()
    assert me["groups"] == ["trainees"] and "custom:usreview:train" in me["scopes"]


def test_adding_a_site_or_a_person_is_audited(hub: Hub, site_token: str) -> None:
    changes = admin_audit(hub.state)  # the service appends meanwhile: the chain holds
    assert changes[0] == ("usreview hub add-user", "users/rev", "added", {"role": "reviewer"})
    [site] = [change for change in changes if change[1] == "sites/clinic"]
    assert site[:3] == ("usreview hub add-site", "sites/clinic", "added")
    assert site_token not in (hub.state / "audit.log").read_text()


def test_a_removed_person_can_no_longer_log_in(hub: Hub) -> None:
    """``usreview hub remove-user`` on a running hub: login, session and API token end."""
    password = _shown_once(hub.cli("add-user", "gone", "--role", "trainee"))
    session, response = _login(hub, "gone", password)
    assert response.status_code == 302, response.text
    response = hub.post(
        "/hub/api/users/gone/tokens",
        json={"auth": {"username": "gone", "password": password}, "note": "test"},
    )
    auth = {"Authorization": f"token {response.json()['token']}"}
    assert hub.get("/hub/api/user", headers=auth).status_code == 200
    assert hub.cli("remove-user", "gone") == (
        "gone can no longer log in; the running hub stopped their server and deleted their "
        "tokens; their reports and audit lines stay\n"
    )
    assert _login(hub, "gone", password)[1].status_code == 403
    assert hub.get("/hub/api/user", headers=auth).status_code == 403
    home = session.get(hub.url + "/hub/home", allow_redirects=False, timeout=30)
    assert home.status_code == 302 and "/hub/login" in home.headers["Location"]
    assert admin_audit(hub.state)[-1] == (
        "usreview hub remove-user",
        "users/gone",
        "removed",
        {"hub": "running"},
    )


def test_a_reset_password_replaces_the_old_one_at_once(hub: Hub) -> None:
    old = _shown_once(hub.cli("add-user", "rita", "--role", "reviewer"))
    assert _login(hub, "rita", old)[1].status_code == 302
    new = _shown_once(hub.cli("reset-password", "rita"))
    assert _login(hub, "rita", old)[1].status_code == 403
    assert _login(hub, "rita", new)[1].status_code == 302


def test_hub_stops_cleanly(hub: Hub) -> None:
    elapsed = _stop(hub.process)
    # Stopped by SIGTERM alone within _stop's 30 s (a SIGKILL would give -9): the time is
    # printed, not asserted (the machine is shared; speed goals live in benchmarks).
    print(f"the hub stopped in {elapsed:.1f} s")
    assert hub.process.returncode == 0, hub.log.read_text()[-3000:]
    assert not (hub.state / "jupyterhub.pid").exists()
    with pytest.raises(requests.ConnectionError):
        hub.get("/hub/api/")


def test_a_person_is_removed_from_the_stopped_hubs_database(hub: Hub) -> None:
    """With the hub stopped, ``remove-user`` deletes the person from JupyterHub's database,
    so a next start does not bring back their group and tokens."""
    from jupyterhub import orm

    _stop(hub.process)
    sessions = orm.new_session_factory(f"sqlite:///{hub.state / 'jupyterhub.sqlite'}")
    with sessions() as db:
        assert orm.User.find(db, "rev") is not None  # loaded from the registry at the start
    assert "deleted from the stopped hub's database" in hub.cli("remove-user", "rev")
    with sessions() as db:
        assert orm.User.find(db, "rev") is None
    sessions.kw["bind"].dispose()


def _proxies_on(port: int) -> list[int]:
    """configurable-http-proxy processes serving ``port``, whoever started them."""
    found = []
    for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()):
        with contextlib.suppress(OSError):
            argv = command_line(pid).split(b"\0")
            if any(b"configurable-http-proxy" in a for a in argv) and str(port).encode() in argv:
                found.append(pid)
    return found


def test_a_hub_whose_service_cannot_start_stops_its_proxy(tmp_path: Path) -> None:
    """JupyterHub exits on a failed start without stopping what it started: we do."""
    state = tmp_path / "state"
    open_state(state)
    down = f"postgresql://nobody@127.0.0.1:{free_port()}/usreview"  # nothing listens there
    (state / "service_config.json").write_text(
        json.dumps({"ServiceSettings": {"database_url": down}})
    )
    port = free_port()
    command = [*USREVIEW, "hub", "--state", str(state), "--ip", "127.0.0.1", "--port", str(port)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "the archive's database failed" in done.stderr
    assert "Cleaning up proxy" in done.stderr  # it had started
    assert _proxies_on(port) == [] and service_pids(state) == []
    with socket.create_server(("127.0.0.1", port)):
        pass  # the public port is free for the next start
    assert not (state / "proxy.pid").exists() and not (state / "jupyterhub.pid").exists()


def test_a_killed_hub_takes_its_services_along_and_starts_again(tmp_path: Path) -> None:
    """kill -9 of the hub (the OOM killer, say): its services stop, the next start works."""
    run = HubRun(tmp_path, {"processes": 2, "parse_workers": 1})
    try:
        run.start()
        worker = "usreview.processing.worker"
        assert service_pids(run.state) and service_pids(run.state, worker)
        assert run.process is not None
        run.process.kill()
        run.process.wait()
        wait_until(lambda: not service_pids(run.state) and not service_pids(run.state, worker))
        run.start()  # the same state and port: the proxy left running is replaced
        assert len(service_pids(run.state)) == 3 and len(service_pids(run.state, worker)) == 1
    finally:
        run.stop()
