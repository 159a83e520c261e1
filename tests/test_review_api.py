"""The review API through a real hub, its proxy, its processing worker and TLS.

One hub for the module; the tests run in file order and build on each other: a site
uploads a simulated Doppler study, the hub's worker analyses it, reviewers read the
worklist and the study, claim it, publish a report and an amendment, and the sites open
what they were sent. Every answer is checked against ``docs/openapi.yaml``. At the end,
the worklist of 5,000 studies from 60 sites is timed.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from benchmarks._worklist import fill
from tests import hub_api_support
from tests.hub_api_support import (
    ENVELOPE,
    MISSING_INSTANCE,
    STUDY_CALLS,
    HubRun,
    Site,
    conforms,
    hidden_like_missing,
    service_launch,
    service_pids,
    shown_once,
)
from usreview.envelope import KeyRing, PublicKeys, load_public_keys, seal_file, unseal_file
from usreview.store import Archive

pytestmark = pytest.mark.slow

PSV_LOINC = "11726-7"


@dataclass
class World:
    hub: HubRun
    a: Site
    b: Site
    c: Site
    rev: str
    rev2: str
    trainee: str
    admin: str
    hub_public: PublicKeys
    folder: Path
    study: str = ""
    instance: str = ""
    plaintext: bytes = b""
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)  # version -> answer
    srs: dict[int, Path] = field(default_factory=dict)  # version -> the SR a site opened

    def archive(self) -> Archive:
        return Archive.open(None, self.hub.state / "archive")

    def opened(self, site: Site, cursor: int) -> bytes:
        """A result as ``site`` opens it from its feed."""
        response = self.hub.get(f"/results/{cursor}", site.token)
        assert response.status_code == 200, response.text
        sealed = self.folder / f"{site.name}-{cursor}.env"
        sealed.write_bytes(response.content)
        out = self.folder / f"{site.name}-{cursor}.out"
        unseal_file(sealed, out, recipient=site.keys, keyring=KeyRing([self.hub_public]))
        return out.read_bytes()

    def feed(self, site: Site) -> dict[int, dict[str, Any]]:
        answer = self.hub.get("/results?cursor=0&limit=1000", site.token).json()
        return {item["id"]: item for item in answer["results"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("reviewapi")
    hub = HubRun(root, {"parse_workers": 1, "max_report_bytes": 64 * 1024})
    admin_password = shown_once(hub.cli("add-user", "ada", "--role", "admin"))  # at start
    with hub.running() as folder:
        yield World(
            hub,
            hub.add_site("sitea"),
            hub.add_site("siteb"),
            hub.add_site("sitec"),
            hub.add_person("rev", "reviewer"),
            hub.add_person("rev2", "reviewer"),
            hub.add_person("tina", "trainee"),
            hub.token("ada", admin_password),
            load_public_keys(hub.state / "hub.pub"),
            folder,
        )


def error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """The shared API error check, and the body conforms to the contract's ``Error``."""
    body = hub_api_support.error(response, status, code)
    conforms(body, "Error")
    return body


def report_body(world: World, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "exam_type": "vascular",
        "findings": "Smooth plaque at the left ICA bulb.\nSpectral broadening.",
        "impression": "Left ICA stenosis, 50-69% by velocity criteria. Évaluation faite.",
        "recommendations": "CT angiography within a week.",
        "urgency": "urgent",
        "measurements": [
            {
                "name": "peak_systolic_velocity",
                "value": 182.0,
                "unit": "cm/s",
                "code": None,
                "origin": "automatic",
                "decision": "accepted",
                "source_instance": world.instance,
            },
            {
                "name": "ICA/CCA velocity ratio",
                "value": 2.4,
                "unit": "1",
                "code": {"value": "33868-1", "scheme": "LN", "meaning": "ICA/CCA ratio"},
                "origin": "reviewer",
                "decision": "corrected",
                "source_instance": None,
            },
        ],
        "key_images": [world.instance],
        "recipients": ["sitec"],
    }
    body.update(changes)
    return body


def post_report(world: World, token: str, body: Any) -> requests.Response:
    return world.hub.request("POST", f"/studies/{world.study}/reports", token, json=body)


# -- a study arrives and is analysed ----------------------------------------------------


def test_an_uploaded_study_is_analysed_and_listed(world: World) -> None:
    from usreview.simulate import simulate

    [path] = simulate("pw", world.folder / "pw", seed=3)
    dataset = pydicom.dcmread(path)
    dataset.AccessionNumber = "ACC-0042"
    dataset.ReferringPhysicianName = "HOUSE^GREGORY"
    dataset.save_as(path)
    world.study, world.instance = str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)
    world.plaintext = path.read_bytes()
    sealed = world.folder / "pw.env"
    seal_file(path, sealed, sender=world.a.keys, recipients=[world.hub_public])
    stored = world.hub.request(
        "PUT",
        f"/instances/{world.instance}",
        world.a.token,
        data=sealed.read_bytes(),
        headers={"Content-Type": ENVELOPE},
    )
    assert stored.status_code == 201, stored.text

    deadline = time.monotonic() + 180
    while True:
        detail = world.hub.get(f"/studies/{world.study}", world.rev).json()
        if detail["status"] == "processed":
            break
        assert time.monotonic() < deadline, detail
        assert detail["status"] == "received", detail
        time.sleep(0.5)
    conforms(detail, "StudyDetail")
    [series] = detail["series"]
    assert (series["manufacturer"], series["model_name"]) == ("usreview", "usreview simulator")
    [instance] = series["instances"]
    assert instance["processing"] == {"status": "done", "reason": None}
    analysis = world.hub.get(f"/instances/{world.instance}/analysis", world.rev)
    assert analysis.status_code == 200, analysis.text
    assert instance["analysis"] == analysis.json()
    assert analysis.json()["sop_instance_uid"] == world.instance
    assert PSV_LOINC in {q["code"] for q in analysis.json()["quantities"]}
    assert detail["referring_physician_name"] == "HOUSE^GREGORY"
    assert detail["study_time"] == "09:30:00" and detail["patient_sex"] == "O"
    assert (detail["claim"], detail["reports"]) == (None, [])
    assert detail["known_sites"] == ["sitea", "siteb", "sitec"]

    [row] = [
        s for s in world.hub.get("/studies", world.rev).json()["studies"]
        if s["study_instance_uid"] == world.study
    ]  # fmt: skip
    conforms(row, "Study")
    assert row["patient_name"] == "SIM^PW^S3" and row["patient_id"] == "SIM-PW-3"
    assert (row["study_date"], row["accession_number"]) == ("2024-01-02", "ACC-0042")
    assert row["study_description"] == "usreview simulated study"
    assert row["kinds"] == sorted(row["kinds"]) and "pw_doppler" in row["kinds"]
    assert (row["instances"], row["failed_jobs"], row["reports"], row["claim"]) == (1, 0, 0, None)
    assert row["urgency"] in ("routine", "urgent") and 1 <= len(row["findings"]) <= 3
    flagged = any(r["category"] != "ica_below_50" for r in analysis.json()["recommendations"])
    assert row["urgency"] == ("urgent" if flagged else "routine")


def test_sites_and_trainees_get_the_404_of_a_missing_study(world: World) -> None:
    for token in (world.a.token, world.b.token, world.trainee):  # even the study's own site
        for call in STUDY_CALLS:
            hidden_like_missing(
                world.hub, token, call, world.study, world.instance, report_body(world)
            )
    error(world.hub.get(f"/instances/{MISSING_INSTANCE}/analysis", world.rev), 404, "not_found")
    error(world.hub.request("POST", "/studies/1.2.x/claim", world.rev), 404, "not_found")
    detail = world.hub.get(f"/studies/{world.study}", world.rev).json()
    assert detail["status"] == "processed" and detail["claim"] is None  # nothing happened


# -- claims ---------------------------------------------------------------------------------


def test_a_claim_is_taken_renewed_refused_and_released(world: World) -> None:
    hub, path = world.hub, f"/studies/{world.study}/claim"
    first = hub.request("POST", path, world.rev)
    assert first.status_code == 200, first.text
    conforms(first.json(), "Claim")
    assert first.json()["reviewer"] == "rev"
    assert hub.get(f"/studies/{world.study}", world.rev).json()["status"] == "in_review"
    renewed = hub.request("POST", path, world.rev).json()
    assert renewed["claimed_at"] == first.json()["claimed_at"]
    assert renewed["expires_at"] >= first.json()["expires_at"]
    taken = error(hub.request("POST", path, world.rev2), 409, "claimed")
    assert taken["claim"] == renewed
    assert taken["message"].startswith("claimed by rev until ")
    error(hub.request("DELETE", path, world.rev2), 409, "claimed")
    [row] = [
        s for s in hub.get("/studies?status=in_review", world.rev2).json()["studies"]
        if s["study_instance_uid"] == world.study
    ]  # fmt: skip
    assert row["claim"] == renewed
    listed = hub.get("/studies", world.rev2)
    etag = listed.headers["ETag"]
    unchanged = hub.get("/studies", world.rev2, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    released = hub.request("DELETE", path, world.rev)
    assert released.status_code == 204 and released.content == b""
    # the release changed the worklist at once: a new answer, a new ETag
    after = hub.get("/studies", world.rev2, headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.headers["ETag"] != etag
    assert hub.get(f"/studies/{world.study}", world.rev).json()["status"] == "processed"
    assert hub.request("DELETE", path, world.rev2).status_code == 204  # nothing held

    assert hub.request("POST", path, world.rev2).status_code == 200
    assert hub.request("DELETE", path, world.admin).status_code == 204  # an admin may
    assert hub.get(f"/studies/{world.study}", world.rev).json()["claim"] is None


def test_of_two_reviewers_claiming_at_once_exactly_one_wins(world: World) -> None:
    barrier = threading.Barrier(2)
    answers: dict[str, int] = {}

    def claim(name: str, token: str) -> None:
        session = requests.Session()
        session.trust_env = False
        session.verify = str(world.hub.cert)
        barrier.wait()
        answers[name] = session.post(
            f"{world.hub.url}/services/usreview/api/v1/studies/{world.study}/claim",
            headers={"Authorization": f"token {token}"},
            timeout=60,
        ).status_code

    threads = [
        threading.Thread(target=claim, args=(name, token))
        for name, token in (("rev", world.rev), ("rev2", world.rev2))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert sorted(answers.values()) == [200, 409], answers
    winner = next(name for name, status in answers.items() if status == 200)
    holder = world.hub.get(f"/studies/{world.study}", world.rev).json()["claim"]["reviewer"]
    assert holder == winner
    token = world.rev if winner == "rev" else world.rev2
    assert world.hub.request("DELETE", f"/studies/{world.study}/claim", token).status_code == 204


# -- reports ----------------------------------------------------------------------------


def test_a_report_needs_the_claim_and_every_field_is_checked(world: World) -> None:
    hub = world.hub
    error(post_report(world, world.rev, report_body(world)), 409, "not_claimed")
    assert hub.request("POST", f"/studies/{world.study}/claim", world.rev2).status_code == 200
    error(post_report(world, world.rev, report_body(world)), 409, "claimed")
    assert hub.request("DELETE", f"/studies/{world.study}/claim", world.rev2).status_code == 204
    assert hub.request("POST", f"/studies/{world.study}/claim", world.rev).status_code == 200

    bad_measurement = {**report_body(world)["measurements"][0], "unit": "cm per s"}
    for changes, where in (
        ({"exam_type": "cardiac"}, "exam_type"),
        ({"urgency": None}, "urgency"),
        ({"impression": "  "}, "impression"),
        ({"findings": 7}, "findings"),
        ({"surprise": True}, "surprise"),
        ({"measurements": [bad_measurement]}, "measurements[0].unit"),
        ({"measurements": [{**bad_measurement, "unit": "cm/s", "value": "fast"}]},
         "measurements[0].value"),
        ({"measurements": [{**bad_measurement, "unit": "cm/s", "origin": "ai"}]},
         "measurements[0].origin"),
        ({"measurements": [{**bad_measurement, "unit": "cm/s", "source_instance": "1.2.3"}]},
         "measurements[0].source_instance"),
        ({"key_images": ["1.2.3.4"]}, "key_images[0]"),
        ({"key_images": [world.instance, world.instance]}, "key_images[1]"),
        ({"recipients": ["nowhere"]}, "recipients[0]"),
        ({"recipients": ["sitea"]}, "recipients[0]"),
    ):  # fmt: skip
        body = error(post_report(world, world.rev, report_body(world, **changes)), 400,
                     "bad_request")  # fmt: skip
        assert body["field"] == where and body["message"].startswith(where), body
    missing = report_body(world)
    del missing["impression"]
    assert error(post_report(world, world.rev, missing), 400, "bad_request")["field"] == (
        "impression"
    )
    path = f"/studies/{world.study}/reports"
    as_json = {"Content-Type": "application/json"}
    not_json = hub.request("POST", path, world.rev, data=b"{not json", headers=as_json)
    assert error(not_json, 400, "bad_request")["field"] == "report"
    as_text = hub.request(
        "POST",
        path,
        world.rev,
        data=json.dumps(report_body(world)),
        headers={"Content-Type": "text/plain"},
    )
    error(as_text, 415, "unsupported_media_type")
    huge = report_body(world, findings="x" * 70_000)
    error(post_report(world, world.rev, huge), 413, "too_large")
    assert hub.get(path, world.rev).json() == {"reports": []}  # nothing was published
    assert hub.get(f"/studies/{world.study}", world.rev).json()["claim"]["reviewer"] == "rev"


def test_a_report_is_published_to_the_site_and_the_recipients(world: World) -> None:
    hub = world.hub
    before = {s.name: set(world.feed(s)) for s in (world.a, world.b, world.c)}
    answer = post_report(world, world.rev, report_body(world))
    assert answer.status_code == 201, answer.text
    published = answer.json()
    conforms(published, "PublishedReport")
    assert published["version"] == 1 and published["supersedes"] is None
    world.reports[1] = published

    detail = hub.get(f"/studies/{world.study}", world.rev).json()
    assert (detail["status"], detail["claim"], detail["urgency"]) == ("published", None, "urgent")
    [report] = detail["reports"]
    conforms(report, "Report")
    assert report["content"] == report_body(world)
    assert report["results"] == published["results"]
    assert hub.get(f"/studies/{world.study}/reports", world.rev).json() == {"reports": [report]}

    new = {s.name: set(world.feed(s)) - before[s.name] for s in (world.a, world.b, world.c)}
    assert new["siteb"] == set()
    kinds_a = {world.feed(world.a)[c]["kind"]: c for c in new["sitea"]}
    kinds_c = {world.feed(world.c)[c]["kind"]: c for c in new["sitec"]}
    assert set(kinds_a) == {"report", "report-summary"}  # the site has its own images
    assert set(kinds_c) == {"report", "report-summary", "key-image"}
    assert set(published["results"]) == set(new["sitec"]) == {*kinds_a.values(), *kinds_c.values()}

    sr_bytes = world.opened(world.a, kinds_a["report"])
    assert world.opened(world.c, kinds_c["report"]) == sr_bytes
    world.srs[1] = world.folder / "report-v1.dcm"
    world.srs[1].write_bytes(sr_bytes)
    sr = pydicom.dcmread(world.srs[1])
    assert sr.SOPInstanceUID == published["sop_instance_uid"]
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == (
        "VERIFIED", "COMPLETE", "FINAL"
    )  # fmt: skip
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "rev^"
    assert (sr.PatientName, sr.PatientID, sr.StudyInstanceUID) == (
        "SIM^PW^S3", "SIM-PW-3", world.study
    )  # fmt: skip
    assert sr.AccessionNumber == "ACC-0042"
    items = list(_walk(sr))
    codes = {
        i.ConceptNameCodeSequence[0].CodeValue for i in items if "ConceptNameCodeSequence" in i
    }
    assert {PSV_LOINC, "33868-1", "121071", "121073", "121075"} <= codes
    images = [i for i in items if i.ValueType == "IMAGE"]
    assert world.instance in {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images}
    texts = {i.TextValue for i in items if i.ValueType == "TEXT"}
    assert report_body(world)["impression"] in texts

    summary = world.opened(world.a, kinds_a["report-summary"]).decode("utf-8")
    assert "Évaluation faite." in summary and "URGENT" in summary and "182 cm/s" in summary
    assert world.opened(world.c, kinds_c["key-image"]) == world.plaintext


@pytest.mark.external
def test_dciodvfy_finds_no_error_in_the_report(world: World) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy missing: make test installs dicom3tools"
    assert world.srs, "the report was not published"
    for version, path in world.srs.items():
        run = subprocess.run(
            ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        report = run.stdout + run.stderr
        assert [line for line in report.splitlines() if line.startswith("Error")] == [], version
        assert "ComprehensiveSR" in report.split(), report


def test_an_amendment_supersedes_the_published_version(world: World) -> None:
    hub = world.hub
    first = world.reports[1]
    error(post_report(world, world.rev2, report_body(world)), 409, "not_claimed")
    assert hub.request("POST", f"/studies/{world.study}/claim", world.rev2).status_code == 200
    assert hub.get(f"/studies/{world.study}", world.rev).json()["status"] == "published"
    amended = report_body(world, impression="Left ICA stenosis >= 70%.", urgency="critical",
                          recipients=[], key_images=[])  # fmt: skip
    answer = post_report(world, world.rev2, amended)
    assert answer.status_code == 201, answer.text
    second = answer.json()
    assert second["version"] == 2 and second["supersedes"] == min(first["results"])
    assert len(second["results"]) == 2  # no recipients: no key image

    reports = hub.get(f"/studies/{world.study}/reports", world.rev).json()["reports"]
    assert [r["version"] for r in reports] == [1, 2]
    assert reports[0]["content"] == report_body(world)  # never changed
    assert (reports[1]["reviewer"], reports[1]["urgency"]) == ("rev2", "critical")
    [row] = [
        s for s in hub.get("/studies", world.rev).json()["studies"]
        if s["study_instance_uid"] == world.study
    ]  # fmt: skip
    assert (row["urgency"], row["reports"], row["status"]) == ("critical", 2, "published")

    feed = world.feed(world.a)
    by_kind = {feed[c]["kind"]: feed[c] for c in second["results"]}
    assert by_kind["report"]["supersedes"] == min(first["results"])
    assert by_kind["report-summary"]["supersedes"] == sorted(first["results"])[1]
    world.srs[2] = world.folder / "report-v2.dcm"
    world.srs[2].write_bytes(world.opened(world.a, by_kind["report"]["id"]))
    sr = pydicom.dcmread(world.srs[2])
    [predecessor] = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence
    assert (
        predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first["sop_instance_uid"]
    )
    assert (
        sr.InstanceNumber == 2
        and sr.SeriesInstanceUID == pydicom.dcmread(world.srs[1]).SeriesInstanceUID
    )


def test_every_access_is_audited_with_its_outcome(world: World) -> None:
    lines = [json.loads(line) for line in (world.hub.state / "audit.log").read_text().splitlines()]
    seen = {(line["actor"], line["action"], line["outcome"]) for line in lines}
    for expected in (
        ("rev", "write", "claimed"),
        ("rev", "write", "released"),
        ("ada", "write", "released"),
        ("rev2", "write", "claimed"),  # the refused claim, under its error code
        ("rev", "write", "not_claimed"),
        ("rev", "write", "bad_request"),
        ("rev", "write", "too_large"),
        ("rev", "write", "published"),
        ("rev2", "write", "published"),
        ("rev", "read", "allowed"),
        ("sitea", "denial", "not_found"),
        ("tina", "denial", "not_found"),
    ):
        assert expected in seen, expected
    published = [
        line for line in lines if line["outcome"] == "published" and line["actor"] == "rev"
    ]
    resources = {line["resource"] for line in published}
    assert f"studies/{world.study}/reports" in resources
    assert any(r.startswith("results/") for r in resources)  # each sealed result too
    reads = {line["resource"] for line in lines if line["action"] == "read"}
    assert f"instances/{world.instance}/analysis" in reads


# -- the worklist at scale -------------------------------------------------------------


def test_the_worklist_of_5000_studies_answers_quickly(world: World) -> None:
    with world.archive() as archive:
        filled = fill(archive, studies=5000, sites=60)
    # Written behind the service's back: listed once its cached worklist expires.
    deadline = time.monotonic() + 30
    while len(world.hub.get("/studies", world.rev).json()["studies"]) < 5001:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    # Through the proxy and TLS, as reviewers call it, and straight to the service.
    service = service_launch(service_pids(world.hub.state)[0])[1]["JUPYTERHUB_SERVICE_URL"]
    direct = requests.Session()
    direct.trust_env = False
    timings: dict[str, list[float]] = {"proxy": [], "service": []}
    for _ in range(5):
        for where, call in (
            ("proxy", lambda: world.hub.get("/studies", world.rev)),
            ("service", lambda: direct.get(
                f"{service.rstrip('/')}/services/usreview/api/v1/studies",
                headers={"Authorization": f"token {world.rev}"}, timeout=60)),
        ):  # fmt: skip
            started = time.perf_counter()
            response = call()
            timings[where].append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    studies = response.json()["studies"]
    assert len(studies) == 5001  # and the simulated one
    mine = [s for s in studies if s["study_instance_uid"].startswith(filled.prefix)]
    assert len({s["site"] for s in mine}) == 60
    conforms(studies[0], "Study")
    figures = ", ".join(
        f"{where} median {statistics.median(t) * 1000:.0f} ms (best {min(t) * 1000:.0f})"
        for where, t in timings.items()
    )
    print(f"\nGET /studies, 5001 studies, {len(response.content) / 1e6:.1f} MB: {figures}")


# -- a first frame before the instance ----------------------------------------------------


def test_a_frame_is_rendered_once_checked_and_audited_like_the_instance(world: World) -> None:
    import imagecodecs
    import numpy as np

    from usreview.dicom import read

    path = world.folder / "frame-truth.dcm"
    path.write_bytes(world.plaintext)
    truth = read(path).display_frame(0)
    frame = f"/instances/{world.instance}/frames/1"
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        answer = world.hub.get(frame, world.rev)
        timings.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"] == "image/png"
        assert answer.headers["Cache-Control"] == "private, no-store"
        assert np.array_equal(imagecodecs.png_decode(answer.content), truth)  # lossless
    thumb = imagecodecs.png_decode(world.hub.get(f"{frame}?rows=96", world.rev).content)
    step = truth.shape[0] // 96
    assert thumb.shape[0] >= 96 and np.array_equal(thumb, truth[::step, ::step])

    error(world.hub.get(f"/instances/{world.instance}/frames/2", world.rev), 400, "bad_request")
    for rows in ("5", "2000", "big", "%C2%B2"):  # the last: "²", a digit int() refuses
        error(world.hub.get(f"{frame}?rows={rows}", world.rev), 400, "bad_request")
    for token in (world.a.token, world.trainee):  # the study's own site reads no pixels here
        hidden = error(world.hub.get(frame, token), 404, "not_found")
        absent = error(
            world.hub.get(f"/instances/{MISSING_INSTANCE}/frames/1", token), 404, "not_found"
        )
        assert hidden["message"].replace(world.instance, "X") == absent["message"].replace(
            MISSING_INSTANCE, "X"
        )
    error(world.hub.get(f"/instances/{MISSING_INSTANCE}/frames/1", world.rev), 404, "not_found")

    lines = [json.loads(line) for line in (world.hub.state / "audit.log").read_text().splitlines()]
    reads = [
        line for line in lines
        if line["resource"] == frame.lstrip("/") and line["outcome"] == "allowed"
    ]  # fmt: skip
    assert len(reads) == 4 and {line["actor"] for line in reads} == {"rev"}
    assert all(line["detail"]["frame"] == 1 for line in reads)
    denied = {line["actor"] for line in lines if line["resource"] == frame.lstrip("/")} - {"rev"}
    assert denied == {"sitea", "tina"}
    print(f"\nGET {frame}: first {timings[0] * 1000:.0f} ms, then {timings[-1] * 1000:.0f} ms")


def test_the_frame_cache_decodes_once_and_keeps_to_its_bound() -> None:
    import numpy as np

    from usreview.hub.api.frames import FrameCache

    frame = np.arange(200 * 300, dtype=np.uint32).reshape(200, 300).astype(np.uint8)
    decoded: list[str] = []

    def decode(name: str) -> Any:
        return lambda: (decoded.append(name), frame)[1]

    cache = FrameCache(max_bytes=4 * frame.nbytes)
    full = cache.png("a", 1, None, decode("a"))
    assert cache.png("a", 1, 50, decode("a")) != full
    assert cache.png("a", 1, None, decode("a")) == full and decoded == ["a"]
    for name in "bcdef":  # more frames than the bound holds: the oldest go first
        cache.png(name, 1, None, decode(name))
    assert cache.size <= 4 * frame.nbytes
    cache.png("a", 1, None, decode("a"))
    assert decoded == ["a", "b", "c", "d", "e", "f", "a"]

    def missing() -> Any:
        raise ValueError("frame 99999 is outside 1-1")

    for number in range(2, 40):  # frames that are not there leave nothing behind
        with pytest.raises(ValueError):
            cache.png("a", number, None, missing)
    assert cache._busy.keys() <= {(name, 1) for name in "abcdef"}


def _walk(dataset: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _walk(item)
