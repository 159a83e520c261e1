"""A hub whose service runs as several processes (``ServiceSettings.processes``).

A real hub with its proxy; the service's supervisor and its two serving processes are
found in ``/proc``. Sites upload at once through the proxy: every upload is stored once
with a receipt, both processes do work, the audit chain written by three processes
verifies. A serving process killed alone is started again by the supervisor. Then the
supervisor is killed with ``kill -9``: its processes die with it, the hub starts the
service again within seconds, and it holds everything acknowledged and accepts more; a
site's uploads meanwhile are answered 503 at once, and its client stores one as soon as
the service is back.

The hub also has a sites' port (``--site-port``, :mod:`usreview.hub.siteport`): a site
enrolled on it uploads there with its client, over TLS to the service itself; people's
tokens are refused there (403 ``sites_only``, audited), plain HTTP gets no answer, and
the port is served again after the service's restart.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
import requests

from tests.hub_api_support import API, HubRun, Site, service_pids
from tests.site_helpers import alive, wait_until
from usreview.demo import enroll_site, free_port
from usreview.envelope import (
    generate_keys,
    load_private_keys,
    load_public_keys,
    seal_file,
    write_key_pair,
)
from usreview.hub.state import HubState
from usreview.ingest import verify_receipt
from usreview.simulate import simulate
from usreview.site import SiteConfig, load_config
from usreview.site.client import HubClient
from usreview.site.errors import HubUnreachableError

pytestmark = pytest.mark.slow

SITES, PER_SITE = 16, 3


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubRun]:
    settings = {"processes": 2, "parse_workers": 1}
    run = HubRun(tmp_path_factory.mktemp("processes"), settings, site_port=free_port())
    with run.running():
        yield run


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _processes(hub: HubRun) -> tuple[int, list[int]]:
    """The service's supervisor and its serving processes."""
    pids = service_pids(hub.state)
    supervisors = [pid for pid in pids if _parent(pid) not in pids]
    assert len(supervisors) == 1, pids
    workers = [pid for pid in pids if _parent(pid) == supervisors[0]]
    return supervisors[0], sorted(workers)


def _envelopes(hub: HubRun, site: Site, n: int, folder: Path) -> list[tuple[str, bytes]]:
    """``n`` instances of one study, sealed by ``site`` to the hub: (uid, envelope)."""
    folder.mkdir(parents=True)
    template = pydicom.dcmread(simulate("bmode", folder / "template", seed=11)[0])
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    hub_public = load_public_keys(hub.state / "hub.pub")
    sealed = []
    for i in range(n):
        dataset = template.copy()
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = pydicom.uid.generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        plain, envelope = folder / f"{i}.dcm", folder / f"{i}.env"
        dataset.save_as(plain, enforce_file_format=True)
        seal_file(plain, envelope, sender=site.keys, recipients=[hub_public])
        sealed.append((str(dataset.SOPInstanceUID), envelope.read_bytes()))
    return sealed


def _send(hub: HubRun, site: Site, uploads: list[tuple[str, bytes]]) -> list[str]:
    """Upload in order; the UIDs acknowledged with a receipt that verifies."""
    hub_public = load_public_keys(hub.state / "hub.pub")
    acknowledged = []
    for uid, envelope in uploads:
        for _ in range(50):  # as a site does: again while the proxy finds no service
            response = hub.upload(uid, envelope, site.token)
            if response.status_code not in (502, 503):
                break
            time.sleep(0.1)
        assert response.status_code == 201, response.text
        receipt = verify_receipt(response.json()["receipt"], hub_public, site=site.name)
        assert receipt["sop_instance_uid"] == uid
        acknowledged.append(uid)
    return acknowledged


def _enrolled(
    hub: HubRun, name: str, folder: Path, hub_url: str | None = None
) -> tuple[Site, SiteConfig]:
    """A site enrolled as the demo enrolls one (``site init``, ``hub add-site``), sending
    to ``hub_url`` (default: the hub's public endpoint)."""
    url = hub_url or hub.url
    config = load_config(
        enroll_site(HubState(hub.state), url, name, folder / name, port=free_port())
    )
    return Site(name, config.read_token(), load_private_keys(config.private_key)), config


def _held(hub: HubRun, site: Site) -> set[str]:
    response = hub.get("/receipts", site.token)
    assert response.status_code == 200, response.text
    body = verify_receipt(response.json(), load_public_keys(hub.state / "hub.pub"), site=site.name)
    return {entry["sop_instance_uid"] for entry in body["instances"]}


def test_sites_uploading_at_once_are_served_by_every_process(hub: HubRun) -> None:
    supervisor, workers = _processes(hub)
    assert len(workers) == 2
    sites = [hub.add_site(f"site{i}") for i in range(SITES)]
    uploads = {
        site.name: _envelopes(hub, site, PER_SITE, hub.root / "data" / site.name) for site in sites
    }
    before = {pid: _cpu_ticks(pid) for pid in workers}
    with ThreadPoolExecutor(SITES) as pool:
        done = list(pool.map(lambda s: _send(hub, s, uploads[s.name]), sites))
    spent = {pid: _cpu_ticks(pid) - before[pid] for pid in workers}
    print(f"CPU ticks by serving process: {spent}")
    assert [len(uids) for uids in done] == [PER_SITE] * SITES
    for site in sites:
        assert _held(hub, site) == {uid for uid, _ in uploads[site.name]}
    # Both processes served: neither did less than a tenth of the work.
    assert min(spent.values()) >= 0.1 * sum(spent.values()) > 0, spent

    hub.cli("audit", "--verify")  # the chain written by three processes holds
    starts = [
        line["detail"]
        for line in map(json.loads, (hub.state / "audit.log").read_text().splitlines())
        if line["resource"] == "service" and line["outcome"] == "started"
    ]
    assert starts[-3]["pid"] == supervisor and starts[-3]["processes"] == 2
    assert {d["worker"] for d in starts[-2:]} == {0, 1}
    assert {d["pid"] for d in starts[-2:]} == set(workers)


def _put_all(config: SiteConfig, uploads: list[tuple[str, bytes]]) -> list[dict[str, object]]:
    """Upload with the site's own client on one connection; the answers, its peer port."""
    answers = []
    with HubClient(config) as client:
        for uid, envelope in uploads:
            answers.append(client.put_instance(uid, io.BytesIO(envelope), len(envelope)))
            sock = client._conn.sock if client._conn is not None else None
            assert sock is not None
            answers[-1]["peer_port"] = sock.getpeername()[1]
    return answers


def test_sites_upload_on_the_sites_port_and_only_sites_get_in(hub: HubRun, tmp_path: Path) -> None:
    assert hub.site_port is not None
    assert f"usreview hub: sites' port {hub.site_url}/ " in hub.log.read_text(errors="replace")
    site, config = _enrolled(hub, "siteport", tmp_path, hub.site_url)
    uploads = _envelopes(hub, site, 3, hub.root / "data" / "siteport")
    answers = _put_all(config, uploads)
    hub_public = load_public_keys(hub.state / "hub.pub")
    for (uid, _), answer in zip(uploads, answers, strict=True):
        assert answer["peer_port"] == hub.site_port  # not through the proxy
        assert not answer["duplicate"]
        receipt = verify_receipt(answer["receipt"], hub_public, site=site.name)
        assert receipt["sop_instance_uid"] == uid
    assert _held(hub, site) == {uid for uid, _ in uploads}  # the same archive as the proxy's

    # 'add-site' tells the site where to send.
    write_key_pair(generate_keys("siteother"), tmp_path)
    out = hub.cli("add-site", "siteother", "--public-key", str(tmp_path / "siteother.pub"))
    assert f"the site's hub.url: {hub.site_url}\n" in out, out

    # People's tokens, and no token, are refused there; the same token works through the proxy.
    reviewer = hub.add_person("rita", "reviewer")
    on_port = requests.Session()
    on_port.trust_env, on_port.verify = False, str(hub.cert)
    studies = f"{hub.site_url}{API}/studies"
    refused = on_port.get(studies, headers={"Authorization": f"token {reviewer}"}, timeout=30)
    assert refused.status_code == 403, refused.text
    assert (refused.json()["error"], refused.json()["reason"]) == ("forbidden", "sites_only")
    assert hub.get("/studies", reviewer).status_code == 200
    assert on_port.get(studies, timeout=30).status_code == 401
    upload = on_port.put(
        f"{hub.site_url}{API}/instances/{uploads[0][0]}",
        data=uploads[0][1],
        headers={"Authorization": f"token {reviewer}", "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert (upload.status_code, upload.json()["reason"]) == (403, "sites_only"), upload.text
    denials = [
        line
        for line in map(json.loads, (hub.state / "audit.log").read_text().splitlines())
        if line["actor"] == "rita" and line["action"] == "denial"
    ]
    assert [d["detail"]["reason"] for d in denials[-2:]] == ["sites_only", "sites_only"]

    # TLS only: a plain HTTP request gets no answer.
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{hub.site_port}{API}/whoami", timeout=10)


def test_a_killed_supervisor_takes_its_processes_along_and_the_hub_starts_it_again(
    hub: HubRun, tmp_path: Path
) -> None:
    supervisor, workers = _processes(hub)
    site = hub.add_site("sitek")
    first, middle, second = (
        _envelopes(hub, site, 3, hub.root / "data" / f"kill-{i}") for i in range(3)
    )
    acknowledged = _send(hub, site, first)
    client_site, config = _enrolled(hub, "sitec", tmp_path)
    [(uid, envelope)] = _envelopes(hub, client_site, 1, hub.root / "data" / "outage")

    # A serving process killed alone is started again; the service keeps answering.
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: workers[0] not in _processes(hub)[1], timeout=10, step=0.05)
    wait_until(lambda: len(_processes(hub)[1]) == 2, timeout=30, step=0.05)
    acknowledged += _send(hub, site, middle)
    supervisor, workers = _processes(hub)

    os.kill(supervisor, signal.SIGKILL)
    killed = time.monotonic()
    # The hub notices within SERVICE_POLL_SECONDS and starts the service again (its own
    # interval, 30 s, would fail the bound below). Meanwhile its proxy answers a site's
    # every upload 503 at once, and the site sends again until the upload is stored. The
    # site's client drops its connection after each such answer: the proxy may have left
    # the rest of the body unread on it, and would not read the next request for 6 s.
    refusals: list[str] = []
    with HubClient(config) as client:
        while True:
            try:
                answer = client.put_instance(uid, io.BytesIO(envelope), len(envelope))
                break
            except HubUnreachableError as exc:
                refusals.append(str(exc))
                assert time.monotonic() - killed < 20, "the hub did not start the service"
                time.sleep(0.02)
    assert answer["sop_instance_uid"] == uid and not answer["duplicate"]
    assert refusals and all(": 503 " in refusal for refusal in refusals), refusals[-3:]
    assert not any(alive(pid) for pid in workers)  # they died with their supervisor

    hub.wait_for_service(timeout=60)
    supervisor_again, workers_again = _processes(hub)
    assert supervisor_again != supervisor and len(workers_again) == 2
    assert _held(hub, site) == set(acknowledged)
    acknowledged += _send(hub, site, second)
    assert _held(hub, site) == set(acknowledged)

    # The restarted service serves the sites' port again.
    site_port_site, site_port_config = _enrolled(hub, "siteagain", tmp_path, hub.site_url)
    [(again, envelope)] = _envelopes(hub, site_port_site, 1, hub.root / "data" / "again")
    [answer] = _put_all(site_port_config, [(again, envelope)])
    assert answer["peer_port"] == hub.site_port and answer["sop_instance_uid"] == again
