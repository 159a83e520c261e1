"""Who reads what: reviewers restricted to some sites, trainees and scientists and the
case library.

One real hub (proxy, TLS, service, processing worker) for the module; the tests run in
file order and build on each other. Two sites send a study each; reviewer ``rn`` may
read ``north`` only (``add-user --sites``), ``rall`` every site, ``tina`` is a trainee,
``sam`` a scientist. ``rn`` publishes north's study (with ``south`` as second recipient)
and makes it a teaching case; ``tina`` and ``sam`` read its de-identified copies, which are
searched for every identifying value of the source. ``rall`` then makes south's Doppler
study a case, and ``sam`` runs the pipeline on the case library
(:mod:`usreview.review.research` and ``notebooks/research.ipynb``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests

from tests.hub_api_support import (
    ENVELOPE,
    STUDY_CALLS,
    USREVIEW,
    HubRun,
    Site,
    conforms,
    error,
    hidden_like_missing,
    service_launch,
    service_pids,
    shown_once,
)
from usreview.dicom import read
from usreview.envelope import PublicKeys, load_public_keys, seal_file
from usreview.teaching import region_mask

pytestmark = pytest.mark.slow

PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN-424242",
    "PatientBirthDate": "19750310",
    "AccessionNumber": "ACC-777001",
    "InstitutionName": "Saint Elsewhere Clinic",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "OperatorsName": "RATCHED^MILDRED",
    "StationName": "USROOM9",
}


@dataclass
class World:
    hub: HubRun
    north: Site
    south: Site
    rn: str
    rall: str
    tina: str
    sam: str
    admin: str
    hub_public: PublicKeys
    folder: Path
    studies: dict[str, str] = field(default_factory=dict)  # site -> study UID
    instances: dict[str, str] = field(default_factory=dict)  # site -> SOP Instance UID
    sources: dict[str, Path] = field(default_factory=dict)  # site -> the DICOM sent
    case: dict[str, Any] = field(default_factory=dict)
    prior: str = ""  # north's second study of the same patient


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = {"parse_workers": 1, "unchanged_audit_seconds": 2}
    hub = HubRun(tmp_path_factory.mktemp("access"), settings)
    admin_password = shown_once(hub.cli("add-user", "ada", "--role", "admin"))
    rn_password = shown_once(hub.cli("add-user", "rn", "--role", "reviewer", "--sites", "north"))
    with hub.running() as folder:
        yield World(
            hub,
            hub.add_site("north"),
            hub.add_site("south"),
            hub.token("rn", rn_password),
            hub.add_person("rall", "reviewer"),
            hub.add_person("tina", "trainee"),
            hub.add_person("sam", "scientist"),
            hub.token("ada", admin_password),
            load_public_keys(hub.state / "hub.pub"),
            folder,
        )


def listed(world: World, token: str, **query: str) -> list[str]:
    answer = world.hub.get("/studies", token, params=query)
    assert answer.status_code == 200, answer.text
    return [s["study_instance_uid"] for s in answer.json()["studies"]]


def audit_lines(world: World) -> list[dict[str, Any]]:
    text = (world.hub.state / "audit.log").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_each_site_sends_a_study(world: World) -> None:
    from usreview.simulate import simulate

    for site, kind, seed in ((world.north, "bmode", 11), (world.south, "pw", 12)):
        [path] = simulate(kind, world.folder / site.name, seed=seed)
        dataset = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path)
        uid = str(dataset.SOPInstanceUID)
        world.studies[site.name], world.instances[site.name] = str(dataset.StudyInstanceUID), uid
        world.sources[site.name] = path
        sealed = world.folder / f"{site.name}.env"
        seal_file(path, sealed, sender=site.keys, recipients=[world.hub_public])
        stored = world.hub.upload(uid, sealed.read_bytes(), site.token, ENVELOPE)
        assert stored.status_code == 201, stored.text
    deadline = time.monotonic() + 180
    study = world.studies["north"]
    while (status := world.hub.get(f"/studies/{study}", world.rall).json()["status"]) != (
        "processed"
    ):
        assert status == "received" and time.monotonic() < deadline, status
        time.sleep(0.5)


def test_a_restricted_reviewer_lists_only_their_sites(world: World) -> None:
    north, south = world.studies["north"], world.studies["south"]
    assert listed(world, world.rn) == [north]
    assert set(listed(world, world.rall)) == {north, south}
    assert listed(world, world.rn, site="south") == []
    # Answers are cached per set of sites: each reviewer's ETag is that of their own list.
    everything = world.hub.get("/studies", world.rall)
    theirs = world.hub.get(
        "/studies", world.rn, headers={"If-None-Match": everything.headers["ETag"]}
    )
    assert theirs.status_code == 200 and theirs.headers["ETag"] != everything.headers["ETag"]
    again = world.hub.get("/studies", world.rn, headers={"If-None-Match": theirs.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""


def test_unchanged_re_reads_are_audited_as_one_counted_line(world: World) -> None:
    north = world.studies["north"]
    paths = (f"studies/{north}", "studies")
    before = len(audit_lines(world))
    etags = {path: world.hub.get(f"/{path}", world.rall).headers["ETag"] for path in paths}
    sent, unchanged = Counter(paths), Counter[str]()  # answers with data, and 304s
    for _ in range(3):  # an open study page and worklist asking again
        for path in paths:
            again = world.hub.get(f"/{path}", world.rall, headers={"If-None-Match": etags[path]})
            if again.status_code == 304:
                assert again.content == b""
                unchanged[path] += 1
            else:  # changed meanwhile (processing of the other site's study)
                assert again.status_code == 200, again.text
                etags[path] = again.headers["ETag"]
                sent[path] += 1
    assert unchanged[f"studies/{north}"] >= 1 and unchanged.total() >= 3
    # The reads that sent data are audited line by line, the re-reads only counted ...
    lined = Counter(
        x["resource"]
        for x in audit_lines(world)[before:]
        if x["actor"] == "rall" and x["outcome"] == "allowed"
    )
    assert lined == sent

    # ... in one line per resource once quiet for unchanged_audit_seconds (2 here), or
    # one per service process that answered some of them.
    def counted() -> tuple[list[dict[str, Any]], Counter[str]]:
        lines = [
            x
            for x in audit_lines(world)[before:]
            if x["outcome"] == "unchanged" and x["actor"] == "rall"
        ]
        total = Counter[str]()
        for x in lines:
            total[x["resource"]] += x["detail"]["count"]
        return lines, total

    deadline = time.monotonic() + 30
    while (found := counted())[1] != unchanged:
        assert time.monotonic() < deadline, (found, unchanged)
        time.sleep(0.25)
    lines = found[0]
    assert {x["action"] for x in lines} == {"read"}
    assert len(lines) <= 2 * len(unchanged)  # two processes serve this hub
    assert all(x["detail"]["from"] <= x["detail"]["to"] for x in lines)


def test_outside_their_sites_a_study_answers_the_404_of_a_missing_one(world: World) -> None:
    study, instance = world.studies["south"], world.instances["south"]
    body = {"exam_type": "vascular", "impression": "x", "urgency": "routine"}
    for call in STUDY_CALLS:
        hidden_like_missing(world.hub, world.rn, call, study, instance, body)
    assert world.hub.get(f"/studies/{study}", world.rall).status_code == 200
    assert world.hub.get(f"/instances/{instance}", world.rall).status_code == 200
    denials = [
        line
        for line in audit_lines(world)
        if line["actor"] == "rn"
        and line["action"] == "denial"
        and (study in line["resource"] or instance in line["resource"])
    ]
    assert len(denials) == len(STUDY_CALLS)
    assert all(line["detail"]["restricted_to"] == ["north"] for line in denials)
    assert {line["outcome"] for line in denials} == {"not_found"}


def test_a_study_lists_the_patients_prior_studies_of_its_site(world: World) -> None:
    from usreview.simulate import simulate

    north, south = world.studies["north"], world.studies["south"]
    [path] = simulate("bmode", world.folder / "north-prior", seed=13)
    dataset = pydicom.dcmread(path)
    for keyword, value in PHI.items():  # north's patient (and the Patient ID south sent)
        setattr(dataset, keyword, value)
    dataset.StudyDate, dataset.StudyDescription = "20230105", "Abdomen <prior>"
    dataset.save_as(path)
    world.prior, uid = str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)
    sealed = world.folder / "north-prior.env"
    seal_file(path, sealed, sender=world.north.keys, recipients=[world.hub_public])
    stored = world.hub.upload(uid, sealed.read_bytes(), world.north.token, ENVELOPE)
    assert stored.status_code == 201, stored.text
    deadline = time.monotonic() + 180
    while (status := world.hub.get(f"/studies/{world.prior}", world.rn).json()["status"]) != (
        "processed"
    ):
        assert status == "received" and time.monotonic() < deadline, status
        time.sleep(0.5)

    answer = world.hub.get(f"/studies/{north}/priors", world.rn)
    assert answer.status_code == 200, answer.text
    [row] = answer.json()["priors"]
    conforms(row, "Study")
    assert (row["study_instance_uid"], row["site"]) == (world.prior, "north")
    assert (row["patient_id"], row["study_date"]) == ("MRN-424242", "2023-01-05")
    back = world.hub.get(f"/studies/{world.prior}/priors", world.rall).json()["priors"]
    assert [r["study_instance_uid"] for r in back] == [north]  # south's is another patient
    assert world.hub.get(f"/studies/{south}/priors", world.rall).json() == {"priors": []}
    call = ("GET", "/studies/{s}/priors")
    hidden_like_missing(world.hub, world.rn, call, south, world.instances["south"], None)
    for token in (world.north.token, world.tina):  # the review scope only
        error(world.hub.get(f"/studies/{north}/priors", token), 404, "not_found")

    lines = audit_lines(world)
    reads = [line for line in lines if line["resource"] == f"studies/{north}/priors"]
    assert [(r["actor"], r["action"], r["outcome"], r["detail"]) for r in reads[:1]] == [
        ("rn", "read", "allowed", {"count": 1, "studies": [world.prior]})
    ]
    assert {(r["actor"], r["action"]) for r in reads[1:]} == {
        ("north", "denial"),
        ("tina", "denial"),
    }
    south_reads = [line for line in lines if line["resource"] == f"studies/{south}/priors"]
    seen = [(r["actor"], r["action"], r["detail"].get("restricted_to")) for r in south_reads]
    assert ("rall", "read", None) in seen and ("rn", "denial", ["north"]) in seen
    assert {actor for actor, action, _ in seen if action == "read"} == {"rall"}


def test_the_study_page_links_the_patients_prior_studies(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    from usreview.review.client import ReviewClient, ServiceError
    from usreview.review.pages import StudyPage

    def priors_of(client: ReviewClient, study: str) -> tuple[StudyPage, str]:
        page = StudyPage(client, study)
        page.close()
        assert "usreview-priors" in page.priors._dom_classes
        return page, page.priors.value

    link = r'<a href="([^"]+)" target="_blank" rel="noopener">([^<]*)</a>'
    with ReviewClient(_service_url(world), world.rn) as client:
        _, shown = priors_of(client, world.studies["north"])
        assert "Prior studies of this patient" in shown
        assert re.findall(link, shown) == [
            (
                f"study.ipynb?study={world.prior}",
                "2023-01-05 · Abdomen &lt;prior&gt; · processed · bmode",
            )
        ]

        def refused(study_instance_uid: str) -> list[dict[str, Any]]:
            raise ServiceError(503, "unavailable", "the archive is busy", {})

        monkeypatch.setattr(client, "priors", refused)
        page, shown = priors_of(client, world.studies["north"])
        assert "Cannot read the prior studies: the archive is busy" in shown
        assert "DOE^JANE" in page.header.value and len(page.thumbnails) == 1  # the rest is there
    with ReviewClient(_service_url(world), world.rall) as client:
        _, shown = priors_of(client, world.studies["south"])
        assert "No prior study of this patient at the hub." in shown
        assert "<a " not in shown


def test_an_administrator_changes_the_sites_of_a_running_hub(world: World) -> None:
    study = world.studies["south"]
    out = world.hub.cli("reviewer-sites", "rn", "--sites", "north,south")
    assert out.strip() == "rn reads north, south"
    deadline = time.monotonic() + 15  # applied within 5 s (and the worklist's 2 s)
    while world.hub.get(f"/studies/{study}", world.rn).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert study in listed(world, world.rn)
    assert world.hub.cli("reviewer-sites", "rn", "--sites", "north").strip() == "rn reads north"
    deadline = time.monotonic() + 15
    while world.hub.get(f"/studies/{study}", world.rn).status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert world.hub.cli("reviewer-sites", "rall").strip() == "rall reads every site"
    for args, status, message in (  # no such reviewer is a failure (1), the others bad input
        (["reviewer-sites", "tina", "--all"], 1, "'tina' is not a registered reviewer"),
        (["reviewer-sites", "rn", "--sites", "North"], 2, "invalid name 'North'"),
        (["add-user", "tom", "--role", "trainee", "--sites", "north"], 2, "restricts reviewers"),
    ):
        run = subprocess.run(
            [*USREVIEW, "hub", *args, "--state", str(world.hub.state)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert run.returncode == status and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.startswith("usreview: error: ") and message in run.stderr, run.stderr
    # A site not registered (yet) is allowed, with a note: a typo would show nothing.
    noted = world.hub.run_cli("reviewer-sites", "rn", "--sites", "north,nowhere")
    assert noted.returncode == 0 and noted.stdout.strip() == "rn reads north, nowhere"
    assert "note: nowhere is not a registered site (yet)" in noted.stderr
    assert "north" not in noted.stderr
    assert world.hub.cli("reviewer-sites", "rn", "--sites", "north").strip() == "rn reads north"
    changes = [line for line in audit_lines(world) if line["resource"] == "reviewers/rn/sites"]
    assert [c["detail"]["sites"] for c in changes] == [
        ["north"],
        ["north", "south"],
        ["north"],
        ["north", "nowhere"],
        ["north"],
    ]


def test_a_restricted_reviewer_publishes_to_a_second_site(world: World) -> None:
    study, instance = world.studies["north"], world.instances["north"]
    assert world.hub.request("POST", f"/studies/{study}/claim", world.rn).status_code == 200
    report = {
        "exam_type": "general",
        "findings": "Jane Doe (MRN-424242), seen 2024-01-02: a 9 mm anechoic cyst.",
        "impression": "Simple cyst; Dr House agrees.",
        "recommendations": "No follow-up.",
        "urgency": "routine",
        "key_images": [instance],
        "recipients": ["south"],
    }
    answer = world.hub.request("POST", f"/studies/{study}/reports", world.rn, json=report)
    assert answer.status_code == 201, answer.text
    feed = world.hub.get("/results?cursor=0", world.south.token).json()["results"]
    kinds = {item["kind"] for item in feed if item["study_instance_uid"] == study}
    assert kinds == {"report", "report-summary", "key-image"}


def test_trainees_and_scientists_reach_no_study(world: World) -> None:
    study, instance = world.studies["north"], world.instances["north"]
    for token in (world.tina, world.sam):
        for path in (
            f"/studies/{study}",
            f"/instances/{instance}",
            f"/instances/{instance}/analysis",
            f"/studies/{study}/reports",
        ):
            error(world.hub.get(path, token), 404, "not_found")
        error(world.hub.get("/studies", token), 403, "forbidden")
        answer = world.hub.request("POST", "/teaching", token, json={"study_instance_uid": study})
        error(answer, 404, "not_found")
        assert world.hub.get("/teaching", token).json() == {"cases": []}


def test_a_reviewer_makes_a_published_study_a_teaching_case(world: World) -> None:
    north, south = world.studies["north"], world.studies["south"]
    hub = world.hub

    def mark(token: str, study: str) -> requests.Response:
        return hub.request("POST", "/teaching", token, json={"study_instance_uid": study})

    error(mark(world.tina, north), 404, "not_found")
    error(mark(world.rn, south), 404, "not_found")  # not one of rn's sites
    error(mark(world.rall, south), 409, "not_ready")  # not published
    error(hub.request("POST", "/teaching", world.rn, json={"study": north}), 400, "bad_request")
    made = mark(world.rn, north)
    assert made.status_code == 201, made.text
    case = made.json()
    assert mark(world.rall, north).status_code == 200
    assert mark(world.rall, north).json() == case  # one case per study
    assert case["case_uid"] != north and len(case["instances"]) == 1
    assert case["refused"] == [] and case["exam_type"] == "general"
    assert case["measurements"] == []  # the report measured nothing
    assert "anechoic cyst" in case["findings"] and "Simple cyst" in case["impression"]
    words = " ".join((case["findings"], case["impression"])).lower()
    for gone in ("jane", "doe", "mrn-424242", "2024", "house", "rn"):
        assert gone not in words.split() and gone not in words.replace("[", " "), gone
    world.case = case


def test_trainees_read_cases_and_only_deidentified_copies(world: World) -> None:
    hub, case = world.hub, world.case
    assert hub.get("/teaching", world.tina).json() == {"cases": [case]}
    assert hub.get(f"/teaching/{case['case_uid']}", world.tina).json() == case
    copy_uid = case["instances"][0]["sop_instance_uid"]
    path = f"/teaching/{case['case_uid']}/instances/{copy_uid}"
    answer = hub.get(path, world.tina)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/dicom"
    copy_path = world.folder / "copy.dcm"
    copy_path.write_bytes(answer.content)

    source = pydicom.dcmread(world.sources["north"])
    uids = {str(e.value) for e in source.iterall() if e.VR == "UI"} - {str(source.SOPClassUID)}
    secrets = {*PHI.values(), "DOE", "JANE", "HOUSE", "RATCHED", "SIM^BMODE", *uids}
    copy = pydicom.dcmread(copy_path)
    for element in copy.iterall():
        if element.tag != 0x7FE00010 and element.VR != "SQ":
            text = str(element.value).upper()
            assert not any(s.upper() in text for s in secrets), element
    header = answer.content[: answer.content.rindex(b"\xe0\x7f\x10\x00")].upper()
    assert not any(s.upper().encode() in header for s in secrets)
    assert copy.PatientIdentityRemoved == "YES" and copy.StudyInstanceUID == case["case_uid"]
    original, cleaned = read(world.sources["north"]), read(copy_path)
    inside = region_mask(original.pixels.rows, original.pixels.columns, original.regions)
    assert int(np.count_nonzero(cleaned.pixels.frames()[:, ~inside])) == 0
    np.testing.assert_array_equal(
        cleaned.pixels.frames()[:, inside], original.pixels.frames()[:, inside]
    )

    # Scientists read the same library.
    assert hub.get("/teaching", world.sam).json() == {"cases": [case]}
    assert hub.get(path, world.sam).content == answer.content

    # Reviewers read them too (a study's similar cases are links to them). A site reads
    # none; an administrator all.
    assert hub.get("/teaching", world.rn).json() == {"cases": [case]}
    assert hub.get(f"/teaching/{case['case_uid']}", world.rall).json() == case
    assert hub.get(path, world.rall).content == answer.content
    error(hub.get("/teaching", world.north.token), 403, "forbidden")
    error(hub.get(f"/teaching/{case['case_uid']}", world.north.token), 404, "not_found")
    error(hub.get(path, world.north.token), 404, "not_found")
    error(hub.get(f"/teaching/{case['case_uid']}/instances/1.2.3", world.tina), 404, "not_found")
    assert hub.get("/teaching", world.admin).json() == {"cases": [case]}


def test_an_amended_report_reaches_its_teaching_case(world: World) -> None:
    """Trainees never learn from a superseded diagnosis: the case takes the new words."""
    hub, case, study = world.hub, world.case, world.studies["north"]
    assert hub.request("POST", f"/studies/{study}/claim", world.rn).status_code == 200
    report = {
        "exam_type": "general",
        "findings": "Jane Doe (MRN-424242), seen on 14 March: a 9 mm anechoic cyst, thin septum.",
        "impression": "Simple cyst with a thin septum, amended after review with Dr House.",
        "recommendations": "Follow-up in March 2025.",
        "urgency": "routine",
        "key_images": [world.instances["north"]],
        "measurements": [
            {
                "name": "distance",
                "value": 9.0,
                "unit": "mm",
                "label": "Cyst depth 14/03",
                "source_instance": world.instances["north"],
            },
        ],
    }
    answer = hub.request("POST", f"/studies/{study}/reports", world.rn, json=report)
    assert answer.status_code == 201 and answer.json()["supersedes"] is not None, answer.text
    amended = hub.get(f"/teaching/{case['case_uid']}", world.tina).json()
    assert "thin septum" in amended["findings"] and "thin septum" in amended["impression"]
    assert "Follow-up in [date]" in amended["recommendations"]
    assert amended["measurements"] == [  # the expert's, for trainees and scientists; no UID
        {"name": "distance", "value": 9.0, "unit": "mm", "label": "Cyst depth [date]",
         "origin": "reviewer", "decision": "accepted", "code": None},
    ]  # fmt: skip
    words = " ".join((amended["findings"], amended["impression"])).lower()
    for gone in ("jane", "doe", "424242", "14 march", "house"):
        assert gone not in words, gone
    words_of = ("findings", "impression", "recommendations", "measurements")
    same = {k: v for k, v in case.items() if k not in words_of}
    assert {k: v for k, v in amended.items() if k not in words_of} == same  # the same copies
    assert hub.get("/teaching", world.tina).json() == {"cases": [amended]}
    assert answer.json()["version"] == 2
    lines = audit_lines(world)
    published = [n for n, x in enumerate(lines) if x["outcome"] == "published"][-1]
    updated = [n for n, x in enumerate(lines) if x["outcome"] == "updated"]
    assert updated and updated[-1] > published  # the publication is audited first
    line = lines[updated[-1]]
    assert (line["actor"], line["action"], line["resource"], line["detail"]) == (
        "rn", "write", f"teaching/{case['case_uid']}", {"study": study}
    )  # fmt: skip
    world.case = amended


def test_trainees_land_on_the_teaching_page_which_shows_the_cases(world: World) -> None:
    from usreview.hub.dashboards import landing_url, notebooks_dir
    from usreview.review.client import ReviewClient
    from usreview.review.teaching import TeachingPage

    assert landing_url(["trainees"]).endswith("/teaching.ipynb")
    notebook = json.loads((notebooks_dir() / "teaching.ipynb").read_text())
    assert "teaching_page()" in "".join(notebook["cells"][0]["source"])
    with ReviewClient(_service_url(world), world.tina) as client:
        page = TeachingPage(client)
        assert [value for _, value in page.picker.options] == [world.case["case_uid"]]
        page.picker.value = world.case["case_uid"]
        assert "anechoic cyst" in page.details.value and "Jane" not in page.details.value
        assert "Cyst depth [date] (distance): 9 mm" in page.details.value
        assert len(page.thumbnails.children) == 1 and page.viewer.children
        assert page.message.value == ""  # no error
        # Her calipers feed a practice panel, which says that nothing is sent, and stays
        # while the case is open.
        viewer, practice = page.viewer.children
        assert "Practice: your measurements (not sent anywhere)" in practice.children[0].value
        assert "Automatic results" not in practice.children[0].value
        assert _buttons(viewer, "usreview-add-measurement") == ["Keep for practice"]
        page.thumbnails.children[0].click()  # the instance again
        assert page.viewer.children[1] is practice


def _buttons(widget: Any, css_class: str) -> list[str]:
    """The descriptions of the buttons below ``widget`` with ``css_class``."""
    found, stack = [], [widget]
    while stack:
        item = stack.pop()
        if css_class in getattr(item, "_dom_classes", ()):
            found.append(str(item.description))
        stack.extend(getattr(item, "children", ()))
    return found


def test_a_reviewer_opens_a_similar_case_from_the_study_page(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    from usreview.processing.similarity import LibraryEntry, Match, similar_cases_finding
    from usreview.review.results import ResultsPanel
    from usreview.review.teaching import teaching_page
    from usreview.teaching import case_name

    case_uid = world.case["case_uid"]
    entry = LibraryEntry(case_uid, world.case["instances"][0]["sop_instance_uid"], None)  # type: ignore[arg-type]
    finding = similar_cases_finding([Match(entry, 0.9312, rank=1, compared=7)])
    panel = ResultsPanel([{"sop_instance_uid": "1.2.3", "analysis": {"findings": [finding]}}])
    [similar] = [
        c.value for c in panel.children[1].children if "usreview-similar" in getattr(c, "value", "")
    ]
    [href] = re.findall(r'href="([^"]+)"', similar)
    assert href == f"teaching.ipynb?case={case_uid}" and f"{case_name(case_uid)}</a>" in similar
    # By rank among the cases compared, never the cosine (only its order means something).
    assert "Most similar cases of 7 compared, closest first:" in similar
    assert '<span class="usreview-case-rank">1st</span>' in similar and "0.93" not in similar
    # The link's page, as Voila runs it in the reviewer's server: the case is open.
    monkeypatch.setenv("QUERY_STRING", href.partition("?")[2])
    monkeypatch.setenv("USREVIEW_SERVICE_URL", _service_url(world))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", world.rn)
    page = teaching_page()
    with page.client:
        assert page.picker.value == case_uid and page.message.value == ""
        assert "anechoic cyst" in page.details.value and page.viewer.children
    monkeypatch.setenv("QUERY_STRING", "case=1.2.3.4")  # a case no longer there
    with (missing := teaching_page()).client:
        assert "No teaching case 1.2.3.4" in missing.message.value


def test_scientists_run_the_pipeline_on_the_case_library(world: World) -> None:
    from usreview.review.client import ReviewClient
    from usreview.review.research import CASE_COLUMNS, case_table, run_on_cases

    hub, study, instance = world.hub, world.studies["south"], world.instances["south"]
    truth = json.loads((world.folder / "south" / "pw.truth.json").read_text())
    expected = hub.get(f"/instances/{instance}/analysis", world.rall).json()
    assert hub.request("POST", f"/studies/{study}/claim", world.rall).status_code == 200
    report = {
        "exam_type": "general",
        "findings": "Carotid spectrum, normal velocities.",
        "impression": "No stenosis.",
        "recommendations": "None.",
        "urgency": "routine",
        "key_images": [instance],
    }
    answer = hub.request("POST", f"/studies/{study}/reports", world.rall, json=report)
    assert answer.status_code == 201, answer.text
    answer = hub.request("POST", "/teaching", world.rall, json={"study_instance_uid": study})
    assert answer.status_code == 201, answer.text
    pw_case = answer.json()["case_uid"]
    # A reviewer of north only opens this case of a south study: it is de-identified.
    error(hub.get(f"/studies/{study}", world.rn), 404, "not_found")
    assert hub.get(f"/teaching/{pw_case}", world.rn).json() == answer.json()

    with ReviewClient(_service_url(world), world.sam) as client:
        cases = case_table(client)
        assert list(cases.columns) == list(CASE_COLUMNS)
        assert set(cases["case_uid"]) == {world.case["case_uid"], pw_case}
        pw = cases[cases["kinds"].map(lambda kinds: "pw_doppler" in kinds)]
        assert list(pw["case_uid"]) == [pw_case] and list(pw["impression"]) == ["No stenosis."]
        seen: list[tuple[int, int]] = []
        runs = run_on_cases(client, pw, progress=lambda done, total: seen.append((done, total)))
        missing = run_on_cases(client, pw.assign(sop_instance_uid="1.2.3"))
    assert seen == [(1, 1)]
    measured = runs[runs["quantity"].notna()].set_index("quantity")
    assert set(measured["sop_instance_uid"]) == set(pw["sop_instance_uid"])
    assert set(measured["impression"]) == {"No stenosis."}
    hub_values = {q["name"]: q["value"] for q in expected["quantities"]}
    for name in ("peak_systolic_velocity", "end_diastolic_velocity", "resistive_index"):
        # The de-identified copy keeps the spectrum, so the numbers are the hub's own.
        assert measured.loc[name, "value"] == pytest.approx(hub_values[name], rel=1e-9), name
    assert measured.loc["peak_systolic_velocity", "value"] == pytest.approx(
        truth["psv_cm_s"], rel=0.05
    )
    assert measured.loc["resistive_index", "value"] == pytest.approx(truth["ri"], abs=0.02)
    # An instance the library does not hold is a row that says why; the run goes on.
    assert list(missing["status"]) == ["error"] and "no instance" in missing["reason"][0]


def test_scientists_land_on_the_research_notebook_which_runs(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    from usreview.hub.dashboards import landing_url, notebooks_dir

    assert landing_url(["scientists"]).endswith("/research.ipynb")
    notebook = nbformat.read(notebooks_dir() / "research.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells)  # committed without
    monkeypatch.setenv("USREVIEW_SERVICE_URL", _service_url(world))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", world.sam)
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    shown = {
        name: output["data"]["text/plain"]
        for cell, name in zip(
            [c for c in notebook.cells if c.cell_type == "code"],
            ("cases", "runs", "study", "mine"),
            strict=True,
        )
        for output in cell.outputs
        if output.get("output_type") == "execute_result"
    }
    assert "Simple cyst" in shown["cases"] and "No stenosis." in shown["cases"]
    assert "peak_systolic_velocity" in shown["runs"] and "No stenosis." in shown["runs"]
    assert "value_60db" in shown["study"]
    assert shown["mine"].count("mean_grey") == 2  # both cases' instances


def _service_url(world: World) -> str:
    service = service_launch(service_pids(world.hub.state)[0])[1]["JUPYTERHUB_SERVICE_URL"]
    return f"{service.rstrip('/')}/services/usreview/"


def test_every_access_is_audited(world: World) -> None:
    lines = audit_lines(world)
    seen = {(line["actor"], line["action"], line["outcome"]) for line in lines}
    for expected in (
        ("rn", "denial", "not_found"),
        ("rn", "write", "created"),
        ("rn", "write", "published"),
        ("rall", "write", "allowed"),  # the case the study had already
        ("tina", "read", "allowed"),
        ("tina", "denial", "not_found"),
        ("tina", "denial", "forbidden"),
        ("sam", "read", "allowed"),
        ("sam", "denial", "not_found"),
        ("sam", "denial", "forbidden"),
        ("rall", "write", "not_ready"),
        ("rall", "read", "unchanged"),  # re-reads answered 304, counted
        ("usreview hub reviewer-sites", "admin", "changed"),
    ):
        assert expected in seen, expected
    reads = {line["resource"] for line in lines if line["actor"] == "tina"}
    case = world.case
    uid = case["instances"][0]["sop_instance_uid"]
    assert {"teaching", f"teaching/{case['case_uid']}"} <= reads
    assert f"teaching/{case['case_uid']}/instances/{uid}" in reads
    reviewed = {line["resource"] for line in lines if line["actor"] in ("rn", "rall")}
    assert {"teaching", f"teaching/{case['case_uid']}/instances/{uid}"} <= reviewed
    science = [line for line in lines if line["actor"] == "sam"]
    assert f"teaching/{case['case_uid']}/instances/{uid}" in {s["resource"] for s in science}
    for line in science:  # a scientist is refused every study and identified instance
        if line["resource"].startswith(("studies", "instances")):
            assert line["action"] == "denial", line
    verify = subprocess.run(
        [*USREVIEW, "hub", "audit", "--verify", "--state", str(world.hub.state)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr


def test_a_reviewer_withdraws_a_teaching_case(world: World) -> None:
    """A case that must not be shown (text burned into its images, say) goes for everyone."""
    from usreview.review.client import ReviewClient
    from usreview.review.teaching import TeachingPage

    hub, case_uid = world.hub, world.case["case_uid"]
    listed = [c["case_uid"] for c in hub.get("/teaching", world.tina).json()["cases"]]
    [south_case] = [uid for uid in listed if uid != case_uid]
    path = f"/teaching/{case_uid}"
    error(hub.request("DELETE", path, world.tina), 403, "forbidden")
    error(hub.request("DELETE", path, world.sam), 403, "forbidden")
    error(hub.request("DELETE", path, world.north.token), 404, "not_found")
    error(hub.request("DELETE", f"/teaching/{south_case}", world.rn), 404, "not_found")
    assert list(hub.state.rglob(case_uid))  # its encrypted copies
    with ReviewClient(_service_url(world), world.tina) as client:
        assert TeachingPage(client).withdraw.layout.display == "none"  # trainees: no button
    with ReviewClient(_service_url(world), world.rn) as client:
        page = TeachingPage(client)
        page.picker.value = case_uid
        assert page.withdraw.layout.display != "none"
        page.withdraw.click()  # asks first
        assert "Click again" in page.withdraw.description
        assert hub.get(path, world.tina).status_code == 200
        page.withdraw.click()
        assert "withdrawn: nobody sees it any more" in page.message.value
        assert [value for _, value in page.picker.options] == [south_case]
    error(hub.get(path, world.tina), 404, "not_found")
    copy = world.case["instances"][0]["sop_instance_uid"]
    error(hub.get(f"{path}/instances/{copy}", world.sam), 404, "not_found")
    assert [c["case_uid"] for c in hub.get("/teaching", world.tina).json()["cases"]] == [south_case]
    assert not list(hub.state.rglob(case_uid))
    error(hub.request("DELETE", path, world.rn), 404, "not_found")  # once
    withdrawn = [x for x in audit_lines(world) if x["outcome"] == "withdrawn"]
    assert [(x["actor"], x["action"], x["resource"]) for x in withdrawn] == [
        ("rn", "write", f"teaching/{case_uid}")
    ]
    # The study's report stands; the study can be made a case again.
    made = hub.request(
        "POST", "/teaching", world.rn, json={"study_instance_uid": world.studies["north"]}
    )
    assert made.status_code == 201 and made.json()["case_uid"] != case_uid, made.text
