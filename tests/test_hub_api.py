"""The service's HTTP API through a real hub, its proxy and TLS (``docs/openapi.yaml``).

One hub for the module; the tests run in file order and build on each other: uploads,
refusals, what reviewers and other sites see, results, the audit log, and at the end a
restart of the whole hub.
"""

from __future__ import annotations

import http.client
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import CTImageStorage

from tests.conftest import write_us
from tests.hub_api_support import ENVELOPE, HubRun, Site, service_launch, service_pids
from tests.site_helpers import wait_until
from usreview.envelope import (
    KeyRing,
    PrivateKeys,
    PublicKeys,
    load_public_keys,
    seal_file,
    unseal_file,
)
from usreview.hub.api import publish_result
from usreview.hub.conflicts import ACTOR
from usreview.hub.state import HubState
from usreview.ingest import verify_receipt
from usreview.store import Archive, Reviewer
from usreview.store.jobs_schema import JobStatus

pytestmark = pytest.mark.slow

MAX_UPLOAD = 2 * 1024 * 1024
#: Kinds of result the hub's processing worker publishes by itself.
AUTOMATIC = {"sr", "summary", "derived-image"}


@dataclass
class World:
    hub: HubRun
    a: Site
    b: Site
    reviewer: str
    trainee: str
    hub_public: PublicKeys
    folder: Path
    stored: dict[str, bytes] = field(default_factory=dict)  # uid -> plaintext acknowledged
    results: dict[str, list[int]] = field(default_factory=dict)  # site -> result ids seen

    def seal(self, plaintext: Path, sender: PrivateKeys, *recipients: PublicKeys) -> bytes:
        out = self.folder / f"{time.monotonic_ns()}.env"
        seal_file(plaintext, out, sender=sender, recipients=list(recipients or [self.hub_public]))
        return out.read_bytes()

    def archive(self) -> Archive:
        return Archive.open(None, self.hub.state / "archive")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = {"max_upload_bytes": MAX_UPLOAD, "parse_workers": 1}
    hub = HubRun(tmp_path_factory.mktemp("hubapi"), settings)
    with hub.running() as folder:
        yield World(
            hub,
            hub.add_site("sitea"),
            hub.add_site("siteb"),
            hub.add_person("rev", "reviewer"),
            hub.add_person("tina", "trainee"),
            load_public_keys(hub.state / "hub.pub"),
            folder,
        )


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from usreview.simulate import simulate

    folder = tmp_path_factory.mktemp("study")
    return [simulate("bmode", folder / str(seed), seed=seed)[0] for seed in (1, 2)]


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def study_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["error"] == code, body
    return body


# -- uploads -----------------------------------------------------------------------------


def test_a_site_uploads_and_gets_a_receipt_that_verifies(world: World, study: list[Path]) -> None:
    uid = uid_of(study[0])
    envelope = world.seal(study[0], world.a.keys)
    first = world.hub.upload(uid, envelope, world.a.token)
    assert first.status_code == 201, first.text
    answer = first.json()
    assert answer["sop_instance_uid"] == uid and answer["duplicate"] is False
    assert answer["study_instance_uid"] == study_of(study[0])
    body = verify_receipt(answer["receipt"], world.hub_public, site="sitea")
    assert body["sop_instance_uid"] == uid and body["kind"] == "instance"
    world.stored[uid] = study[0].read_bytes()

    again = world.hub.upload(uid, envelope, world.a.token)  # a lost acknowledgement
    assert again.status_code == 200 and again.json()["duplicate"] is True
    resealed = world.hub.upload(uid, world.seal(study[0], world.a.keys), world.a.token)
    assert resealed.status_code == 200 and resealed.json()["duplicate"] is True
    verify_receipt(resealed.json()["receipt"], world.hub_public, site="sitea")

    # A receipt asked for later, and the batch of everything held for the site.
    later = world.hub.get(f"/instances/{uid}/receipt", world.a.token)
    assert verify_receipt(later.json(), world.hub_public, site="sitea")["sop_instance_uid"] == uid
    batch = verify_receipt(world.hub.get("/receipts", world.a.token).json(), world.hub_public)
    assert [i["sop_instance_uid"] for i in batch["instances"]] == [uid]


def test_different_bytes_under_a_stored_uid_conflict(world: World, study: list[Path]) -> None:
    changed = world.folder / "changed.dcm"
    dataset = pydicom.dcmread(study[0])
    dataset.ImageComments = "changed after sending"
    dataset.save_as(changed)
    uid = uid_of(study[0])
    assert uid_of(changed) == uid
    response = world.hub.upload(uid, world.seal(changed, world.a.keys), world.a.token)
    assert "kept aside" in error(response, 409, "conflict")["message"]


def test_refusals_answer_4xx_and_store_nothing(world: World, study: list[Path]) -> None:
    hub, a = world.hub, world.a
    uid = uid_of(study[1])
    good = world.seal(study[1], a.keys)

    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 0x01
    error(hub.upload(uid, bytes(tampered), a.token), 400, "bad_envelope")
    error(hub.upload(uid, good[: len(good) // 2], a.token), 400, "bad_envelope")
    error(hub.upload(uid, world.seal(study[1], world.b.keys), a.token), 403, "wrong_sender")
    other = load_public_keys(hub.root / "sites" / "siteb" / "siteb.pub")
    error(hub.upload(uid, world.seal(study[1], a.keys, other), a.token), 400, "not_for_hub")
    error(hub.upload(uid_of(study[0]), good, a.token), 400, "uid_mismatch")

    ct = write_us(
        world.folder / "ct.dcm", np.zeros((1, 48, 64), np.uint8), sop_class=CTImageStorage
    )
    body = error(hub.upload(uid_of(ct), world.seal(ct, a.keys), a.token), 422, "rejected_instance")
    assert body["reason"] == "not ultrasound"
    truncated = world.folder / "truncated.dcm"
    truncated.write_bytes(study[1].read_bytes()[:200_000])
    body = error(hub.upload(uid, world.seal(truncated, a.keys), a.token), 422, "rejected_instance")
    assert body["reason"] == "corrupt pixel data"
    noise = world.folder / "noise.bin"
    noise.write_bytes(np.random.default_rng(1).bytes(5000))
    body = error(hub.upload(uid, world.seal(noise, a.keys), a.token), 422, "rejected_instance")
    assert body["reason"] == "not DICOM"

    # Limits and protocol, before any body is read.
    error(
        _before_the_body(hub, lambda: hub.upload(uid, b"\0" * (MAX_UPLOAD + 1), a.token)),
        413,
        "too_large",
    )

    def chunked() -> requests.Response:
        chunks = (b"\0" * 65536 for _ in range(MAX_UPLOAD // 65536 + 2))
        return hub.request(  # type: ignore[no-any-return]
            "PUT", f"/instances/{uid}", a.token, data=chunks, headers={"Content-Type": ENVELOPE}
        )

    error(_before_the_body(hub, chunked), 413, "too_large")

    def early(token: Any, media: str = ENVELOPE) -> requests.Response:
        """An upload refused before its body is read (401, 403, 415)."""
        return _before_the_body(hub, lambda: hub.upload(uid, good, token, content_type=media))

    error(early(a.token, "text/plain"), 415, "unsupported_media_type")
    error(early(a.token, ""), 415, "unsupported_media_type")
    error(hub.upload(uid, b"", a.token), 400, "bad_envelope")
    error(early(None), 401, "unauthorized")
    error(early("not-a-token"), 403, "forbidden")
    error(early(world.trainee), 403, "forbidden")
    error(early(world.reviewer), 403, "forbidden")
    error(hub.upload("1.2.x", good, a.token), 400, "bad_request")

    # Neither length nor chunked: 411 from the service (the proxy sends every PUT body
    # chunked, so this is asked of the service directly).
    service = urlparse(service_launch(service_pids(hub.state)[0])[1]["JUPYTERHUB_SERVICE_URL"])
    conn = http.client.HTTPConnection(service.hostname or "", service.port or 80, timeout=30)
    conn.putrequest("PUT", f"/services/usreview/api/v1/instances/{uid}")
    conn.putheader("Authorization", f"token {a.token}")
    conn.putheader("Content-Type", ENVELOPE)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411, response.read()
    conn.close()

    # The service still serves, and stored nothing of all that.
    assert hub.get("/whoami", a.token).status_code == 200
    accepted = hub.upload(uid, good, a.token)
    assert accepted.status_code == 201, accepted.text
    world.stored[uid] = study[1].read_bytes()
    with world.archive() as archive:
        held = {r.sop_instance_uid for r in archive.list_instances(Reviewer("test"))}
        assert held == set(world.stored)
        assert len(archive.list_conflicts()) == 1  # the 409 above, kept aside
        report = archive.fsck()
        assert report.clean and not report.orphans, report
    for folder in ("quarantine", "spool"):  # no file left, the service processes' included
        assert [p for p in (hub.state / folder).rglob("*") if not p.is_dir()] == []


def test_tls_only_for_the_public_endpoint(world: World) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(world.hub.url + "/services/usreview/api/v1/whoami", timeout=10)
    context = ssl.create_default_context(cafile=str(world.hub.cert))
    conn = http.client.HTTPSConnection("127.0.0.1", world.hub.port, context=context, timeout=10)
    try:
        conn.request("GET", "/services/usreview/api/v1/studies")
        assert conn.getresponse().status == 401
    finally:
        conn.close()


# -- reading -----------------------------------------------------------------------------


def test_a_reviewer_lists_the_study_and_downloads_the_dicom(
    world: World, study: list[Path]
) -> None:
    hub = world.hub
    listed = hub.get("/studies", world.reviewer)
    assert listed.status_code == 200, listed.text
    studies = {s["study_instance_uid"]: s for s in listed.json()["studies"]}
    study_uid = study_of(study[0])
    assert studies[study_uid]["site"] == "sitea"
    # The hub's worker processes the uploads meanwhile, at its own pace.
    assert studies[study_uid]["status"] in {"received", "processed"}
    assert hub.get("/studies?site=siteb", world.reviewer).json() == {"studies": []}
    error(hub.get("/studies?status=lost", world.reviewer), 400, "bad_request")
    error(hub.get("/studies?site=../etc", world.reviewer), 400, "bad_request")

    detail = hub.get(f"/studies/{study_uid}", world.reviewer).json()
    instances = [i for s in detail["series"] for i in s["instances"]]
    assert [i["sop_instance_uid"] for i in instances] == [uid_of(study[0])]
    assert detail["history"][0]["status"] == "received"

    def plaintext_files() -> list[Path]:
        return [p for p in (hub.state / "quarantine").rglob("*") if not p.is_dir()]

    for uid, plaintext in world.stored.items():
        with hub.get(f"/instances/{uid}", world.reviewer, stream=True) as download:
            assert download.status_code == 200
            # The opened plaintext is read from an unlinked file while it streams.
            assert plaintext_files() == []
            assert download.headers["Content-Type"] == "application/dicom"
            assert download.content == plaintext
    assert plaintext_files() == []


def test_another_site_and_a_trainee_see_nothing(world: World, study: list[Path]) -> None:
    hub = world.hub
    uid, study_uid = uid_of(study[0]), study_of(study[0])
    missing = "1.2.3.4.5"
    for token in (world.b.token, world.trainee):
        for path in ("/studies/{}", "/instances/{}", "/instances/{}/receipt"):
            forbidden = hub.get(path.format(uid if "instances" in path else study_uid), token)
            absent = hub.get(path.format(missing), token)
            body = error(forbidden, 404, "not_found")
            assert body["message"].replace(uid, "X").replace(study_uid, "X") == error(
                absent, 404, "not_found"
            )["message"].replace(missing, "X")
    error(hub.get("/studies", world.b.token), 403, "forbidden")
    error(hub.get("/studies", world.trainee), 403, "forbidden")
    error(hub.get("/results", world.trainee), 403, "forbidden")
    assert hub.get("/results", world.b.token).json() == {"results": [], "cursor": 0}
    batch = verify_receipt(hub.get("/receipts", world.b.token).json(), world.hub_public)
    assert batch["site"] == "siteb" and batch["instances"] == []
    # The hub's keys: for sites only (the current key, and no transition yet).
    keys = hub.get("/hub-keys", world.b.token).json()
    assert keys == {"key_id": world.hub_public.key_id.hex(), "key": world.hub_public.to_text(),
                    "transitions": [], "next_certificate": None}  # fmt: skip
    error(hub.get("/hub-keys", world.trainee), 403, "forbidden")


# -- results -----------------------------------------------------------------------------


def _settled(world: World) -> int:
    """Wait until the hub's worker has processed every upload; sitea's feed cursor then.

    Its automatic results (:data:`AUTOMATIC`) are published to the site while it works, so
    a test of what a waiting site receives starts once it is done.
    """
    with world.archive() as archive:
        wait_until(
            lambda: (
                not any(archive.jobs.counts()[s] for s in (JobStatus.PENDING, JobStatus.RUNNING))
            ),
            timeout=120,
        )
    cursor: int = world.hub.get("/results", world.a.token).json()["cursor"]
    return cursor


def _poll(world: World, site: Site, cursor: int, wait: float) -> tuple[requests.Response, float]:
    response = world.hub.get(f"/results?cursor={cursor}&wait={wait}", site.token)
    return response, time.monotonic()


def _publish(world: World, study_uid: str, sites: list[str], text: bytes) -> int:
    payload = world.folder / f"result-{time.monotonic_ns()}.txt"
    payload.write_bytes(text)
    with world.archive() as archive:
        record = publish_result(
            HubState(world.hub.state), archive, study_uid, payload, sites=sites, label="test"
        )
    return record.cursor


def test_a_published_result_reaches_a_waiting_site_within_a_second(
    world: World, study: list[Path]
) -> None:
    start = _settled(world)
    got: list[tuple[requests.Response, float]] = []
    waiter = threading.Thread(target=lambda: got.append(_poll(world, world.a, start, 20)))
    waiter.start()
    time.sleep(1.0)  # the site is waiting
    assert not got
    cursor = _publish(world, study_of(study[0]), ["sitea"], b"report for A")
    published = time.monotonic()
    waiter.join(10)
    response, arrived = got[0]
    assert response.status_code == 200, response.text
    assert [r["id"] for r in response.json()["results"]] == [cursor]
    assert response.json()["cursor"] == cursor
    assert arrived - published < 1.0, f"arrived {arrived - published:.3f} s after publishing"
    world.results["sitea"] = [cursor]

    envelope = world.hub.get(f"/results/{cursor}", world.a.token)
    assert envelope.headers["Content-Type"] == "application/vnd.usreview.envelope"
    sealed, opened = world.folder / "r.env", world.folder / "r.txt"
    sealed.write_bytes(envelope.content)
    unseal_file(sealed, opened, recipient=world.a.keys, keyring=KeyRing([world.hub_public]))
    assert opened.read_bytes() == b"report for A"


def test_results_reach_only_their_addressees(world: World, study: list[Path]) -> None:
    only_a = world.results["sitea"][0]
    error(world.hub.get(f"/results/{only_a}", world.b.token), 404, "not_found")
    error(world.hub.get(f"/results/{only_a}", world.reviewer), 404, "not_found")
    error(world.hub.get("/results/%C2%B2", world.a.token), 404, "not_found")  # "²" is no id
    assert world.hub.get("/results?wait=0.5", world.b.token).json()["results"] == []

    both = _publish(world, study_of(study[0]), ["sitea", "siteb"], b"for both")
    for site in (world.a, world.b):
        answer = world.hub.get("/results?cursor=0", site.token).json()
        ids = [r["id"] for r in answer["results"]]
        assert both in ids
        assert (only_a in ids) == (site is world.a)
        assert world.hub.get(f"/results/{both}", site.token).status_code == 200
    world.results["sitea"].append(both)
    error(world.hub.get("/results?cursor=-1", world.a.token), 400, "bad_request")
    error(world.hub.get("/results?wait=3600", world.a.token), 400, "bad_request")


# -- administration ----------------------------------------------------------------------


def _conflicts(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return world.hub.run_cli("conflicts", *args)


def test_an_administrator_lists_the_sites(world: World, study: list[Path]) -> None:
    listed = world.hub.cli("sites")
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in listed.splitlines()}
    assert set(rows) == {"sitea", "siteb"}
    key, _, instances, studies, last, conflicts = rows["sitea"]
    assert key == world.a.keys.key_id.hex()[:16]
    assert (int(instances), int(studies), int(conflicts)) == (len(world.stored), 2, 1)
    with world.archive() as archive:
        newest = max(r.received_at for r in archive.list_instances(Reviewer("test")))
    assert last == newest.isoformat(timespec="seconds")
    assert rows["siteb"][2:] == ["0", "0", "never", "0"]


def test_an_administrator_exports_and_resolves_a_conflict(world: World, study: list[Path]) -> None:
    """The 409 of ``test_different_bytes_under_a_stored_uid_conflict``, kept aside."""
    uid = uid_of(study[0])
    listed = _conflicts(world)
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    conflict_id, _, site, sop_uid, reason = line.split("\t")
    assert (site, sop_uid) == ("sitea", uid)
    assert reason == "different content under this SOP Instance UID"

    out = world.folder / "conflict-export"
    exported = _conflicts(world, "--export", conflict_id, "--to", str(out))
    assert exported.returncode == 0, exported.stderr
    kept, stored = out / f"conflict-{conflict_id}.dcm", out / f"stored-{conflict_id}.dcm"
    assert stored.read_bytes() == world.stored[uid]
    assert pydicom.dcmread(kept).ImageComments == "changed after sending"
    assert pydicom.dcmread(kept).SOPInstanceUID == uid
    assert {p.stat().st_mode & 0o777 for p in (kept, stored)} == {0o600}
    again = _conflicts(world, "--export", conflict_id, "--to", str(out))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr
    missing = _conflicts(world, "--export", "9999", "--to", str(out))
    assert missing.returncode == 1 and "no conflict 9999" in missing.stderr

    assert _conflicts(world, "--resolve", conflict_id).returncode == 2  # no --note
    resolved = _conflicts(world, "--resolve", conflict_id, "--note", "scanner re-sent; kept first")
    assert resolved.returncode == 0, resolved.stderr
    assert _conflicts(world).stdout == ""
    [line] = _conflicts(world, "--all").stdout.splitlines()
    assert line.endswith("\tresolved: scanner re-sent; kept first")

    import json

    audit = [json.loads(x) for x in (world.hub.state / "audit.log").read_text().splitlines()]
    mine = [(a["action"], a["resource"], a["outcome"]) for a in audit if a["actor"] == ACTOR]
    assert ("export", f"conflicts/{conflict_id}", "allowed") in mine
    assert ("export", f"instances/{uid}", "allowed") in mine
    assert ("admin", f"conflicts/{conflict_id}", "resolved") in mine
    assert ("read", "conflicts", "listed") in mine


# -- audit -------------------------------------------------------------------------------


def test_the_audit_log_records_writes_reads_exports_denials(world: World) -> None:
    import json

    lines = [json.loads(line) for line in (world.hub.state / "audit.log").read_text().splitlines()]
    seen = {(line["actor"], line["action"], line["outcome"]) for line in lines}
    assert ("sitea", "write", "stored") in seen
    assert ("sitea", "write", "duplicate") in seen
    assert ("sitea", "write", "conflict") in seen
    assert ("sitea", "write", "rejected_instance") in seen
    assert ("rev", "read", "allowed") in seen
    assert ("sitea", "export", "allowed") in seen
    assert ("siteb", "denial", "not_found") in seen
    assert ("tina", "denial", "forbidden") in seen
    assert ("anonymous", "denial", "unauthorized") in seen
    reads = [line for line in lines if line["action"] == "read" and line["actor"] == "rev"]
    assert any(line["resource"].startswith("instances/") for line in reads)
    verified = world.hub.run_cli("audit", "--verify")
    assert verified.returncode == 0, verified.stderr
    assert "chain intact" in verified.stdout


# -- restart -----------------------------------------------------------------------------


def test_a_restart_keeps_users_sites_studies_and_cursors(world: World, study: list[Path]) -> None:
    hub = world.hub
    cursor = max(world.results["sitea"])
    hub.stop()
    hub.start()
    assert hub.get("/whoami", world.a.token).json()["groups"] == ["sites"]
    studies = hub.get("/studies", world.reviewer).json()["studies"]
    assert study_of(study[0]) in {s["study_instance_uid"] for s in studies}
    assert (
        hub.get(f"/instances/{uid_of(study[0])}", world.reviewer).content
        == world.stored[uid_of(study[0])]
    )
    new = _publish(world, study_of(study[0]), ["sitea"], b"after the restart")
    answer = hub.get(f"/results?cursor={cursor}&wait=5", world.a.token).json()
    # Only what follows the cursor; the hub's worker may have published its automatic
    # results (SR, summary, derived images) for the uploads meanwhile.
    assert all(r["id"] > cursor for r in answer["results"])
    assert [r["id"] for r in answer["results"] if r["kind"] not in AUTOMATIC] == [new]
    # The site's own uploads still answer as stored.
    again = hub.upload(uid_of(study[0]), world.seal(study[0], world.a.keys), world.a.token)
    assert again.status_code == 200, again.text


def _before_the_body(hub: HubRun, send: Callable[[], requests.Response]) -> requests.Response:
    """``send()`` an upload that is refused before its body is read (413, 415), answered.

    A client still writing its body can see the connection end before it reads the answer
    (the proxy closes once the answer is complete, or when the service closed its side
    first): a real client sends again, and so does this one, up to three times, then the
    answer must be the refusal. Afterwards the session's connections are dropped, as the
    site's client does after any refusal of a request with a body: the proxy may close
    that connection once it has answered, and a request sent on it meanwhile is lost.
    """
    try:
        for attempt in range(3):
            try:
                return send()
            except requests.ConnectionError:
                if attempt == 2:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")
    finally:
        hub.http.close()
