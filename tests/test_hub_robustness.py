"""The service under hostile or unlucky clients, through a real hub, its proxy and TLS.

Slow clients (raw sockets that stall or trickle a body), site key rotation with real
envelopes, expiring and deleted tokens, and a flood of refusals against the audit log.
One hub for the module, with short timeouts.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pydicom
import pytest
import requests

from tests.hub_api_support import (
    API,
    ENVELOPE,
    HubRun,
    Site,
    service_launch,
    service_pids,
    shown_once,
)
from usreview.envelope import (
    KeyRing,
    NotARecipientError,
    PublicKeys,
    generate_keys,
    load_private_keys,
    load_public_keys,
    seal_file,
    unseal_file,
    write_key_pair,
)
from usreview.hub.api import publish_result
from usreview.hub.state import HubState
from usreview.store import Archive

pytestmark = pytest.mark.slow

IDLE = 1.0  # body_idle_timeout
RATE = 2000  # min_upload_rate, bytes/s
HEADERS = 2.0  # header_timeout


@dataclass
class World:
    hub: HubRun
    a: Site
    hub_public: PublicKeys
    folder: Path
    studies: list[Path]

    def seal(self, plaintext: Path, sender: Any) -> bytes:
        out = self.folder / f"{time.monotonic_ns()}.env"
        seal_file(plaintext, out, sender=sender, recipients=[self.hub_public])
        return out.read_bytes()

    def audit(self) -> list[dict[str, Any]]:
        text = (self.hub.state / "audit.log").read_text()
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from usreview.simulate import simulate

    root = tmp_path_factory.mktemp("robust")
    settings = {
        "max_upload_bytes": 4 * 1024**2,
        "parse_workers": 1,
        "body_idle_timeout": IDLE,
        "min_upload_rate": RATE,
        "header_timeout": HEADERS,
        "refusal_audit_burst": 5,
        "refusal_audit_per_minute": 60.0,
    }
    hub = HubRun(root, settings)
    hub.start()
    try:
        folder = root / "work"
        folder.mkdir()
        studies = [simulate("bmode", folder / str(seed), seed=seed)[0] for seed in range(8)]
        yield World(
            hub, hub.add_site("sitea"), load_public_keys(hub.state / "hub.pub"), folder, studies
        )
    finally:
        hub.stop()


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- slow clients ------------------------------------------------------------------------


def open_tls(hub: HubRun) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(hub.cert))
    raw = socket.create_connection(("127.0.0.1", hub.port), timeout=30)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def start_upload(hub: HubRun, token: str, uid: str, length: int) -> ssl.SSLSocket:
    conn = open_tls(hub)
    head = (
        f"PUT {API}/instances/{uid} HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\n"
        f"Authorization: token {token}\r\nContent-Type: {ENVELOPE}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    conn.sendall(head.encode())
    return conn


def read_answer(conn: socket.socket) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of one HTTP answer (the server closes after it)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head, "closed without an answer"
    return int(head.split()[1]), json.loads(body[: _length(data)])


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


def test_a_stalled_body_is_answered_408_and_audited(world: World) -> None:
    envelope = world.seal(world.studies[0], world.a.keys)
    conn = start_upload(world.hub, world.a.token, uid_of(world.studies[0]), len(envelope))
    started = time.monotonic()
    conn.sendall(envelope[:4096])  # then nothing
    status, body = read_answer(conn)
    waited = time.monotonic() - started
    assert (status, body["error"], body["reason"]) == (408, "timeout", "stalled"), body
    assert IDLE <= waited < IDLE + 3, waited
    conn.settimeout(5)
    assert conn.recv(1) == b""  # and the connection is closed
    conn.close()
    lines = [x for x in world.audit() if x["outcome"] == "timeout"]
    assert lines and lines[-1]["actor"] == "sitea" and lines[-1]["detail"]["status"] == 408
    assert lines[-1]["detail"]["reason"] == "stalled"
    # Nothing was kept: the same instance uploads normally afterwards.
    assert world.hub.upload(uid_of(world.studies[0]), envelope, world.a.token).status_code == 201


def test_a_trickled_body_is_answered_408(world: World) -> None:
    envelope = world.seal(world.studies[1], world.a.keys)
    conn = start_upload(world.hub, world.a.token, uid_of(world.studies[1]), len(envelope))
    stop = threading.Event()

    def trickle() -> None:  # 100 bytes/s, never pausing long enough to be "stalled"
        for offset in range(0, len(envelope), 10):
            if stop.wait(0.1):
                return
            try:
                conn.sendall(envelope[offset : offset + 10])
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    started = time.monotonic()
    sender.start()
    try:
        status, body = read_answer(conn)
    finally:
        stop.set()
        sender.join()
        conn.close()
    assert (status, body["reason"]) == (408, "too_slow"), body
    assert time.monotonic() - started < IDLE + 3


def test_stalled_clients_do_not_slow_other_uploads(world: World) -> None:
    uid, envelope = uid_of(world.studies[2]), world.seal(world.studies[2], world.a.keys)
    before = time.monotonic()
    assert world.hub.request("GET", "/whoami", world.a.token).status_code == 200
    alone = time.monotonic() - before
    stalled = [start_upload(world.hub, world.a.token, f"1.2.3.{n}", 10**6) for n in range(30)]
    try:
        for conn in stalled:
            conn.sendall(b"x" * 100)
        before = time.monotonic()
        answer = world.hub.upload(uid, envelope, world.a.token)
        during = time.monotonic() - before
        assert answer.status_code == 201, answer.text
        assert during < max(10 * alone, 0.5) + 1.0, (alone, during)
        assert all(read_answer(conn)[0] == 408 for conn in stalled)
    finally:
        for conn in stalled:
            conn.close()


def test_slow_headers_are_cut_at_the_service(world: World) -> None:
    pid = service_pids(world.hub.state)[0]
    service = urlparse(service_launch(pid)[1]["JUPYTERHUB_SERVICE_URL"])
    conn = socket.create_connection((service.hostname, service.port), timeout=HEADERS + 10)
    started = time.monotonic()
    conn.sendall(b"PUT /services/usreview/api/v1/instances/1.2 HTTP/1.1\r\nHost: x\r\n")
    assert conn.recv(1) == b""  # closed by the service, headers never finished
    assert HEADERS - 0.5 <= time.monotonic() - started < HEADERS + 3
    conn.close()
    ok = requests.get(f"http://{service.hostname}:{service.port}{API}/whoami", timeout=10)
    assert ok.status_code == 401  # still serving


def test_behind_the_proxy_a_connection_may_idle_between_requests(world: World) -> None:
    # The proxy keeps its connections to the service without a time limit: one the
    # service closed as idle could meet the proxy's next request (a 503 "socket hang up").
    pid = service_pids(world.hub.state)[0]
    service = urlparse(service_launch(pid)[1]["JUPYTERHUB_SERVICE_URL"])
    request = f"GET {API}/whoami HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection((service.hostname, service.port), timeout=30) as conn:
        conn.sendall(request)
        assert read_answer(conn)[0] == 401
        time.sleep(HEADERS + 1.5)  # idle longer than a first request's headers may take
        conn.sendall(request)
        assert read_answer(conn)[0] == 401  # the same connection still serves


def test_a_site_idle_longer_than_the_proxys_keep_alive_is_not_told_the_hub_is_down(
    world: World,
) -> None:
    from usreview.site import init_site, load_config
    from usreview.site.client import HubClient

    hub = world.hub
    made = init_site("sitea", hub.url, world.folder / "site", hub_certificate=hub.cert)
    config = load_config(made.config)
    with HubClient(config, token=world.a.token) as client:
        assert client.whoami()["name"] == "sitea"
        time.sleep(6)  # the proxy closes a client's connection idle for 5 s
        assert client.whoami()["name"] == "sitea"  # sent again on a new connection


# -- every access is audited ------------------------------------------------------------


def test_whoami_and_unknown_paths_are_audited(world: World) -> None:
    hub, token = world.hub, world.a.token
    before = len(world.audit())
    me = hub.get("/whoami", token)
    assert me.status_code == 200 and me.json()["name"] == "sitea"
    assert me.json()["groups"] == ["sites"]
    lost = hub.request("DELETE", "/no/such/endpoint", token)
    assert lost.status_code == 404, lost.text
    assert lost.headers["Content-Type"].startswith("application/json")
    assert (lost.json()["status"], lost.json()["error"]) == (404, "not_found")
    outside = hub.http.get(
        f"{hub.url}/services/usreview/elsewhere", headers={"Authorization": f"token {token}"}
    )
    assert outside.status_code == 404 and outside.json()["error"] == "not_found"
    anonymous = hub.get("/no/such/endpoint")  # authentication first: nothing leaks
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    lines = world.audit()[before:]
    mine = [(x["actor"], x["action"], x["resource"], x["outcome"]) for x in lines]
    assert mine[:3] == [
        ("sitea", "read", "whoami", "allowed"),
        ("sitea", "denial", "no/such/endpoint", "not_found"),
        ("sitea", "denial", "/services/usreview/elsewhere", "not_found"),
    ], mine
    assert lines[1]["detail"] == {"method": "DELETE", "status": 404}
    # Anonymous refusals are audited too (a line: the limiter's burst is not spent yet).
    refused = [x for x in lines[3:] if x["actor"] == "anonymous"]
    assert refused and refused[0]["detail"]["status"] == 401, lines
    assert refused[0]["resource"] == "no/such/endpoint"
    assert refused[0]["detail"]["ip"] == "127.0.0.1"


# -- site key rotation ---------------------------------------------------------------------

GRACE = 6  # seconds


def test_a_rotated_site_key_keeps_the_old_one_for_the_grace_only(world: World) -> None:
    hub, old = world.hub, world.a.keys
    new = generate_keys("sitea")
    write_key_pair(new, world.folder / "next")
    sealed_before = world.seal(world.studies[3], old)  # waiting in the site's spool
    out = hub.cli(
        "add-site", "sitea", "--public-key", str(world.folder / "next" / "sitea.pub"),
        "--rotate", "--grace", str(GRACE),
    )  # fmt: skip
    rotated_at = time.monotonic()
    assert new.key_id.hex()[:16] in out and old.key_id.hex()[:16] in out
    # Within the grace period both keys verify (the service reloads the key files).
    answer = hub.upload(uid_of(world.studies[3]), sealed_before, world.a.token)
    assert answer.status_code == 201, answer.text
    answer = hub.upload(uid_of(world.studies[4]), world.seal(world.studies[4], new), world.a.token)
    assert answer.status_code == 201, answer.text
    # Results are sealed to the new key only.
    payload = world.folder / "result.txt"
    payload.write_bytes(b"a result after the rotation")
    with Archive.open(None, hub.state / "archive") as archive:
        study = str(pydicom.dcmread(world.studies[4], stop_before_pixels=True).StudyInstanceUID)
        record = publish_result(HubState(hub.state), archive, study, payload, sites=["sitea"])
    envelope = world.folder / "result.env"
    envelope.write_bytes(hub.get(f"/results/{record.cursor}", world.a.token).content)
    ring = KeyRing([world.hub_public])
    unseal_file(envelope, world.folder / "result.out", recipient=new, keyring=ring)
    assert (world.folder / "result.out").read_bytes() == b"a result after the rotation"
    with pytest.raises(NotARecipientError):
        unseal_file(envelope, world.folder / "result.old", recipient=old, keyring=ring)
    # After the grace period the old key is refused; the new one is not.
    time.sleep(max(0.0, rotated_at + GRACE + 0.5 - time.monotonic()))
    late = hub.upload(uid_of(world.studies[5]), world.seal(world.studies[5], old), world.a.token)
    assert late.status_code == 403 and late.json()["error"] == "wrong_sender", late.text
    answer = hub.upload(uid_of(world.studies[5]), world.seal(world.studies[5], new), world.a.token)
    assert answer.status_code == 201, answer.text
    rotations = [x for x in world.audit() if x["outcome"] == "rotated"]
    assert rotations[-1]["resource"] == "sites/sitea/key"
    assert rotations[-1]["detail"]["replaced_key_id"] == old.key_id.hex()
    assert rotations[-1]["detail"]["grace_seconds"] == GRACE
    # What the old key sealed and the hub stored still opens for a reviewer.
    reviewer = hub.add_person("rev", "reviewer")
    stored = hub.get(f"/instances/{uid_of(world.studies[0])}", reviewer)
    assert stored.status_code == 200 and stored.content == world.studies[0].read_bytes()
    world.a.keys = new  # the site's key from now on


def test_the_site_opens_results_sealed_to_its_old_key_during_a_rotation(
    world: World, tmp_path: Path
) -> None:
    from usreview.site import init_site, load_config, read_status
    from usreview.site.config import rotate_site_key
    from usreview.site.pull import pull_results

    hub = world.hub
    site = init_site(
        "siteb", hub.url, tmp_path / "siteb", hub_certificate=hub.cert,
        hub_public_key=hub.state / "hub.pub",
    )  # fmt: skip
    token = shown_once(hub.cli("add-site", "siteb", "--public-key", str(site.public_key)))
    (tmp_path / "siteb" / "token").write_text(token + "\n")
    (tmp_path / "siteb" / "token").chmod(0o600)
    study = "1.2.826.0.1.3680043.10.1234.1"

    def publish(text: bytes) -> int:
        payload = tmp_path / "result.json"
        payload.write_bytes(text)
        with Archive.open(None, hub.state / "archive") as archive:
            return publish_result(
                HubState(hub.state), archive, study, payload, sites=["siteb"], kind="summary"
            ).cursor

    def delivered(cursor: int) -> bytes:
        return (load_config(site.config).outbox / study / f"{cursor:08d}-summary.json").read_bytes()

    old_config = load_config(site.config)
    new = rotate_site_key(old_config, "20261126T190000Z")  # the site switched first
    config = load_config(site.config)
    assert config.retired_private_keys == (old_config.private_key,)
    # The hub does not have the new key yet: it seals to the old one.
    sealed_to_old = publish(b'{"sealed": "to the old key"}')
    report = pull_results(config)
    assert [cursor for cursor, _ in report.delivered] == [sealed_to_old]
    assert delivered(sealed_to_old) == b'{"sealed": "to the old key"}'
    assert not list((config.state / "refused").iterdir())
    # The hub switches: what it seals now opens with the new key.
    hub.cli("add-site", "siteb", "--public-key", str(new.public_key), "--rotate")
    sealed_to_new = publish(b'{"sealed": "to the new key"}')
    # A result addressed to a key the site never had is still refused.
    stranger = generate_keys("siteb")
    hub_keys = load_private_keys(HubState(hub.state).hub_key)
    foreign = tmp_path / "foreign.env"
    seal_file(tmp_path / "result.json", foreign, sender=hub_keys, recipients=[stranger.public])
    with Archive.open(None, hub.state / "archive") as archive:
        refused = archive.results.publish_result(
            foreign, sites=["siteb"], study_instance_uid=study, kind="summary"
        ).cursor
    report = pull_results(config)
    assert [cursor for cursor, _ in report.delivered] == [sealed_to_new, refused]
    assert delivered(sealed_to_new) == b'{"sealed": "to the new key"}'
    aside = [f"{refused:08d}.envelope", f"{refused:08d}.json"]  # the envelope, its feed item
    assert sorted(p.name for p in (config.state / "refused").iterdir()) == aside
    errors = read_status(config).recorded["errors"]
    assert any(f"result {refused} refused" in e["message"] for e in errors)
    # Retried as it is, it is still refused and kept.
    report = pull_results(config, retry_refused=True)
    assert (report.retried, report.still_refused, report.delivered) == ([], 1, [])
    assert sorted(p.name for p in (config.state / "refused").iterdir()) == aside
    # The key it was sealed to was the site's after all (a rotation not recorded): listed
    # among the retired keys, the result opens, lands in the outbox, and leaves refused/.
    write_key_pair(stranger, tmp_path / "found")
    text = site.config.read_text()
    listed = f'retired_keys = ["{tmp_path / "found" / "siteb.key"}", '
    site.config.write_text(text.replace("retired_keys = [", listed, 1))
    report = pull_results(load_config(site.config), retry_refused=True)
    assert [cursor for cursor, _ in report.retried] == [refused] and report.still_refused == 0
    assert delivered(refused) == (tmp_path / "result.json").read_bytes()
    assert not list((config.state / "refused").iterdir())


# -- tokens --------------------------------------------------------------------------------


def _admin(hub: HubRun) -> Any:
    from usreview.hub.admin import HubApi

    state = HubState(hub.state)
    return HubApi(str(state.read_run_info()["api_url"]), state.read_admin_token())


def _refused_after(hub: HubRun, token: str, since: float, limit: float) -> float:
    """Seconds from ``since`` until the service refuses ``token`` (polling every 0.2 s)."""
    while time.monotonic() - since < limit:
        status = hub.get("/whoami", token).status_code
        if status != 200:
            assert status == 403
            return time.monotonic() - since
        time.sleep(0.2)
    raise AssertionError(f"token still accepted after {limit} s")


def test_an_expiring_token_is_refused_once_expired(world: World) -> None:
    from usreview.hub.roles import SITE_TOKEN_SCOPES
    from usreview.hub.service import TOKEN_CACHE_SECONDS

    lifetime = 3
    minted = _admin(world.hub).request(
        "POST",
        "users/sitea/tokens",
        {"scopes": list(SITE_TOKEN_SCOPES), "expires_in": lifetime, "note": "expiring"},
    )
    created, token = time.monotonic(), str(minted["token"])
    assert world.hub.get("/whoami", token).status_code == 200
    # What the service's lookup receives: does the hub tell it when the token expires?
    model = world.hub.http.get(
        f"{world.hub.url}/hub/api/user", headers={"Authorization": f"token {token}"}, timeout=10
    ).json()
    exact = model.get("expires_at") is not None
    waited = _refused_after(world.hub, token, created, lifetime + TOKEN_CACHE_SECONDS + 5)
    # JupyterHub's hub-side check of expiry runs at a coarse interval; the service adds
    # at most its cache lifetime, or nothing when the model carries the expiry.
    lag = 1.0 if exact else TOKEN_CACHE_SECONDS + 1.0
    assert lifetime - 0.5 <= waited <= lifetime + lag, (waited, exact)


def test_a_deleted_token_is_refused_within_the_cache_lifetime(world: World) -> None:
    from usreview.hub.roles import SITE_TOKEN_SCOPES
    from usreview.hub.service import TOKEN_CACHE_SECONDS

    admin = _admin(world.hub)
    minted = admin.request(
        "POST", "users/sitea/tokens", {"scopes": list(SITE_TOKEN_SCOPES), "note": "deleted"}
    )
    token = str(minted["token"])
    assert world.hub.get("/whoami", token).status_code == 200  # now in the service's cache
    admin.request("DELETE", f"users/sitea/tokens/{minted['id']}")
    waited = _refused_after(world.hub, token, time.monotonic(), TOKEN_CACHE_SECONDS + 5)
    assert waited <= TOKEN_CACHE_SECONDS + 0.5


def test_an_administrator_renews_then_revokes_a_site_token(world: World) -> None:
    """``usreview hub site-token``: a leaked token stops working, the new one works."""
    from usreview.hub.roles import SITE_TOKEN_SCOPES
    from usreview.hub.service import TOKEN_CACHE_SECONDS

    hub = world.hub
    site = hub.add_site("sitec")
    second = _admin(hub).new_token("sitec", SITE_TOKEN_SCOPES, "a second machine")
    for token in (site.token, second):
        assert hub.get("/whoami", token).status_code == 200  # in the service's cache now
    renewed = hub.cli("site-token", "sitec")
    assert "revoked 2 API token(s) of site sitec" in renewed
    new = renewed.rsplit("shown once: ", 1)[1].strip()
    since = time.monotonic()
    for token in (site.token, second):
        assert _refused_after(hub, token, since, TOKEN_CACHE_SECONDS + 5) <= TOKEN_CACHE_SECONDS + 1
    assert hub.get("/whoami", new).json()["name"] == "sitec"

    revoked = hub.cli("site-token", "sitec", "--revoke-only")
    assert "revoked 1 API token(s)" in revoked and "shown once" not in revoked
    _refused_after(hub, new, time.monotonic(), TOKEN_CACHE_SECONDS + 5)

    unknown = hub.run_cli("site-token", "rev")
    assert unknown.returncode == 1 and "'rev' is not a registered site" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    changes = [
        (a["outcome"], a["detail"]) for a in world.audit() if a["resource"] == "sites/sitec/token"
    ]
    assert changes == [("renewed", {"revoked": 2}), ("revoked", {"revoked": 1})]


# -- a flood of refusals -------------------------------------------------------------------


def test_a_flood_of_refusals_is_counted_not_written_line_by_line(world: World) -> None:
    from usreview.hub.service import SUPPRESSED_EVERY

    hub, sent = world.hub, 300
    before = len(world.audit())
    lock, latencies = threading.Lock(), []

    def flood(count: int) -> None:
        with requests.Session() as session:
            session.trust_env, session.verify = False, str(hub.cert)
            for i in range(count):
                # A fresh X-Real-Ip each time: it must neither be audited as the caller's
                # address nor give the caller a fresh allowance.
                spoofed = f"10.9.{i // 200}.{i % 200 + 1}"
                answer = session.get(
                    hub.url + API + "/receipts",
                    headers={"Authorization": "token wrong", "X-Real-Ip": spoofed},
                )
                assert answer.status_code == 403

    def legit() -> None:
        for _ in range(10):
            started = time.monotonic()
            assert hub.get("/receipts", world.a.token).status_code == 200
            with lock:
                latencies.append(time.monotonic() - started)

    threads = [threading.Thread(target=flood, args=(sent // 3,)) for _ in range(3)]
    threads.append(threading.Thread(target=legit))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lasted = time.monotonic() - started
    # Every refusal is a line or counted in one; the counts arrive within a flush period
    # once the caller's allowance has refilled.
    deadline = time.monotonic() + SUPPRESSED_EVERY + 5
    while True:
        lines = [x for x in world.audit()[before:] if x["actor"] == "anonymous"]
        single = [x for x in lines if x["outcome"] == "forbidden"]
        counted = sum(x["detail"].get("suppressed", 0) for x in single)
        counted += sum(x["detail"]["count"] for x in lines if x["outcome"] == "suppressed")
        if len(single) + counted == sent or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(single) + counted == sent, (len(single), counted)
    assert len(single) <= 5 + lasted * 60 / 60 + 2  # the burst, then the refill rate
    assert all(x["detail"].get("ip") == "127.0.0.1" for x in lines)
    assert max(latencies) < 2.0, latencies  # the service kept serving the site
